#!/usr/bin/env bash
# Scores a run's checkpoint on every worker of every slice (`mmpretrain eval`): one JAX
# job, each host loading its rows of every held-out batch.
# shellcheck source=tpu_scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<USAGE
Usage: tpu_scripts/eval.sh --workdir=gs://BUCKET/RUN [--dry-run] [--step=N] \\
           [--config=FILE --config.key=value ...]

Runs \`mmpretrain eval\` with these flags on every worker (--worker=all) of every node at
once and waits for it. The workers join one JAX job (jax.distributed on the TPU VM; each
slice gets launch.sh's DCN settings when NUM_SLICES > 1): the checkpoint's parameters
(the newest, or --step) are restored in shards over the config's mesh, each host loads
its rows of every held-out batch (eval.batch_size rows a batch), and process 0 writes
WORKDIR/eval/step_N.json (the scalars, num_devices, mesh_shape) and its images. Without
--config the run's own WORKDIR/config.json is read; with one, DATA_DIR (when set) is
passed as --config.data.data_dir.
USAGE
}

parse_flags "$@"
checkpoint_verb eval
