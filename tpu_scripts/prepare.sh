#!/usr/bin/env bash
# Writes a config's datasets and tokenizer into DATA_DIR once, from worker 0 of the first
# node (every worker then reads them from there).
# shellcheck source=tpu_scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<USAGE
Usage: tpu_scripts/prepare.sh --config=FILE [--dry-run] [--data_dir=gs://BUCKET/data] \\
           [--config.key=value ...]

Runs \`mmpretrain prepare --nolatents\` with the config (and DATA_DIR as
--config.data.data_dir) on worker 0 of the first node, after setup.sh. Idempotent: what is
there is kept. A config with visual.cached_latents then needs cache_latents.sh, which
encodes the latent cache on every worker. launch.sh checks the same config with
\`mmpretrain prepare --check\` before it starts.
USAGE
}

parse_flags "$@"
require_config
# One worker alone cannot join the pod's JAX job: the latent cache is cache_latents.sh's.
prepare=(.venv/bin/mmpretrain prepare --nolatents "${EXTRA_ARGS[@]}")
if [[ -n "$DATA_DIR" ]]; then prepare+=(--config.data.data_dir="$DATA_DIR"); fi
ssh_workers "$(nodes | head -n 1)" 0 "cd ~/$REMOTE_DIR && $(printf '%q ' "${prepare[@]}")"
