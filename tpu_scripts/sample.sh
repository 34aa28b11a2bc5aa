#!/usr/bin/env bash
# Samples from a run's checkpoint on every worker of every slice (`mmpretrain sample`): one
# JAX job, each host writing the images its chips drew.
# shellcheck source=tpu_scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<USAGE
Usage: tpu_scripts/sample.sh --workdir=gs://BUCKET/RUN [--dry-run] [--step=N] \\
           [--caption=TEXT ... --images_per_caption=N] [--prompt=TEXT ...] \\
           [--prompts=gs://BUCKET/evaluation_metadata.jsonl] \\
           [--output=gs://BUCKET/DIR] [--config=FILE --config.key=value ...]

Runs \`mmpretrain sample\` with these flags on every worker (--worker=all) of every node
at once and waits for it. The workers join one JAX job (jax.distributed on the TPU VM;
each slice gets launch.sh's DCN settings when NUM_SLICES > 1): the checkpoint's
parameters are restored in shards over the config's mesh and the images of --caption are
drawn with their rows split over the chips. Each host writes the images its chips drew
(OUTPUT/captions_stepN_processP.png; OUTPUT defaults to WORKDIR/samples); process 0
prints the texts and writes the rest and OUTPUT/sample_stepN.json (what was sampled and
which file holds which images). --prompts draws a benchmark's prompts (GenEval, DPG-Bench)
into OUTPUT in its scorer's layout, each host writing its share (docs/image_benchmarks.md).
Without --config the run's own WORKDIR/config.json is
read; with one, DATA_DIR (when set) is passed as --config.data.data_dir.
USAGE
}

parse_flags "$@"
checkpoint_verb sample
