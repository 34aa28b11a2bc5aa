#!/usr/bin/env bash
# Encodes a config's latent cache (visual.cached_latents) on every worker of every slice:
# each host encodes its share of the datasets' source shards on its own chips.
# shellcheck source=tpu_scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<USAGE
Usage: tpu_scripts/cache_latents.sh --config=FILE [--dry-run] [--data_dir=gs://BUCKET/data] \\
           [--config.key=value ...]

Runs \`mmpretrain prepare\` with the config (and DATA_DIR as --config.data.data_dir) on
every worker (--worker=all) of every node, after prepare.sh, and waits for it. The workers
join one JAX job (jax.distributed on the TPU VM; each slice gets launch.sh's DCN settings
when NUM_SLICES > 1): process 0 checks the datasets and the tokenizer, then every worker
encodes the source shards assigned to it (balanced by records) on its chips and writes
one cache file per shard into DATA_DIR. Re-running it encodes only the shards whose file
is missing (after a preemption, or when inputs were added). launch.sh's readiness check
names any missing shard.
USAGE
}

parse_flags "$@"
require_config
prepare=(.venv/bin/mmpretrain prepare "${EXTRA_ARGS[@]}")
if [[ -n "$DATA_DIR" ]]; then prepare+=(--config.data.data_dir="$DATA_DIR"); fi
on_every_worker "${prepare[@]}"
