#!/usr/bin/env bash
# Deletes the TPU (the TPU VM, or the queued resource with all its nodes).
# shellcheck source=tpu_scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<USAGE
Usage: tpu_scripts/delete.sh [--dry-run]

Deletes TPU_NAME ($TPU_NAME) in ZONE ($ZONE) without asking. Checkpoints in gs:// stay.
USAGE
}

parse_flags "$@"
[[ ${#EXTRA_ARGS[@]} -eq 0 ]] || die "unknown arguments: ${EXTRA_ARGS[*]} (see --help)"
flags=(--zone="$ZONE" --quiet)
if [[ -n "$PROJECT" ]]; then flags+=(--project="$PROJECT"); fi
if queued; then
  run gcloud compute tpus queued-resources delete "$TPU_NAME" "${flags[@]}" --force
else
  run gcloud compute tpus tpu-vm delete "$TPU_NAME" "${flags[@]}"
fi
