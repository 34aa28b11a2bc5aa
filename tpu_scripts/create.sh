#!/usr/bin/env bash
# Creates the TPU: a TPU VM, or a queued resource (QUEUED=true, and always for multislice).
# shellcheck source=tpu_scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<USAGE
Usage: tpu_scripts/create.sh [--dry-run] [--zone=Z --accelerator_type=T --capacity=C ...]

Creates TPU_NAME ($TPU_NAME) in ZONE ($ZONE) as ACCELERATOR_TYPE ($ACCELERATOR_TYPE) on
CAPACITY ($CAPACITY: on-demand | spot | preemptible). QUEUED=true or NUM_SLICES > 1 asks
for a queued resource (nodes TPU_NAME-0..N-1 for N slices); the request waits for capacity.
Settings come from tpu_scripts/env.sh (or TPU_ENV) and the environment; --dry-run prints
the command without running it.
USAGE
}

parse_flags "$@"
[[ ${#EXTRA_ARGS[@]} -eq 0 ]] || die "unknown arguments: ${EXTRA_ARGS[*]} (see --help)"
version="$(runtime_version)"
flags=(--zone="$ZONE" --accelerator-type="$ACCELERATOR_TYPE")
if [[ -n "$PROJECT" ]]; then flags+=(--project="$PROJECT"); fi

if queued; then
  flags+=(--runtime-version="$version")
  if [[ "$NUM_SLICES" -gt 1 ]]; then
    flags+=(--node-count="$NUM_SLICES" --node-prefix="$TPU_NAME")
  else
    flags+=(--node-id="$TPU_NAME")
  fi
  case "$CAPACITY" in
    spot) flags+=(--spot) ;;
    preemptible) die "a queued resource is on-demand or spot; use CAPACITY=spot" ;;
  esac
  run gcloud compute tpus queued-resources create "$TPU_NAME" "${flags[@]}"
else
  flags+=(--version="$version")
  case "$CAPACITY" in
    spot) flags+=(--spot) ;;
    preemptible) flags+=(--preemptible) ;;
  esac
  run gcloud compute tpus tpu-vm create "$TPU_NAME" "${flags[@]}"
fi
