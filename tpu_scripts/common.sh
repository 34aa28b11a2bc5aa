# Helpers sourced by every tpu_scripts/*.sh: settings, flags, printing and running gcloud.
# shellcheck shell=bash
set -euo pipefail

TPU_SCRIPTS="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=tpu_scripts/env.sh
source "${TPU_ENV:-$TPU_SCRIPTS/env.sh}"
DRY_RUN=false
EXTRA_ARGS=()

die() { echo "$(basename "$0"): error: $*" >&2; exit 2; }

# Shared flags: --help, --dry-run, and --name=value for any setting of env.sh
# (--zone=…, --accelerator_type=…); anything else is left in EXTRA_ARGS.
parse_flags() {
  local arg key
  for arg in "$@"; do
    case "$arg" in
      -h|--help) usage; exit 0 ;;
      --dry-run|--dry_run) DRY_RUN=true ;;
      --project=*|--zone=*|--tpu_name=*|--accelerator_type=*|--runtime_version=*|\
      --capacity=*|--queued=*|--num_slices=*|--repo_url=*|--branch=*|--data_dir=*)
        key="${arg%%=*}"; key="${key#--}"
        printf -v "${key^^}" '%s' "${arg#*=}" ;;
      *) EXTRA_ARGS+=("$arg") ;;
    esac
  done
  [[ "$NUM_SLICES" =~ ^[1-9][0-9]*$ ]] || die "NUM_SLICES=$NUM_SLICES: use a positive integer"
  case "$CAPACITY" in on-demand|spot|preemptible) ;; *)
    die "CAPACITY=$CAPACITY: use on-demand, spot or preemptible" ;; esac
}

# Refuses a run without --config=FILE among the extra arguments (the verb's own flags).
require_config() {
  local arg
  for arg in "${EXTRA_ARGS[@]}"; do
    [[ "$arg" == --config=* ]] && return 0
  done
  die "--config=FILE is required (a config file of the checkout)"
}

# Prints a command exactly (shell-quoted), then runs it unless --dry-run.
run() {
  printf '%q ' "$@"; echo
  if ! $DRY_RUN; then "$@"; fi
}

runtime_version() {
  if [[ -n "$RUNTIME_VERSION" ]]; then echo "$RUNTIME_VERSION"; return; fi
  case "$ACCELERATOR_TYPE" in
    v4-*) echo "tpu-ubuntu2204-base" ;;
    v5litepod-*) echo "v2-alpha-tpuv5-lite" ;;
    v5p-*) echo "v2-alpha-tpuv5" ;;
    v6e-*) echo "v2-alpha-tpuv6e" ;;
    *) die "ACCELERATOR_TYPE=$ACCELERATOR_TYPE: use v4-N, v5litepod-N, v5p-N or v6e-N (or set RUNTIME_VERSION)" ;;
  esac
}

queued() { [[ "$QUEUED" == true || "$NUM_SLICES" -gt 1 ]]; }

# The TPU VM names: one, or TPU_NAME-0 … TPU_NAME-(N-1) for N slices.
nodes() {
  if [[ "$NUM_SLICES" -gt 1 ]]; then
    local i; for ((i = 0; i < NUM_SLICES; i++)); do echo "$TPU_NAME-$i"; done
  else
    echo "$TPU_NAME"
  fi
}

# ssh_workers NODE WORKER COMMAND: runs COMMAND on WORKER (a number or 'all') of NODE.
ssh_workers() {
  local flags=(--zone="$ZONE" --worker="$2" --command="$3")
  if [[ -n "$PROJECT" ]]; then flags+=(--project="$PROJECT"); fi
  run gcloud compute tpus tpu-vm ssh "$1" "${flags[@]}"
}

# slice_env SLICE: sets SLICE_ENV to the DCN settings of slice SLICE of a multislice run
# (MEGASCALE_COORDINATOR_ADDRESS = slice 0's first worker, looked up once), '' for one slice.
slice_env() {
  SLICE_ENV=""
  [[ "$NUM_SLICES" -gt 1 ]] || return 0
  if [[ -z "${MEGASCALE_COORDINATOR:-}" ]]; then
    local describe=(gcloud compute tpus tpu-vm describe "$TPU_NAME-0" --zone="$ZONE"
                    --format='value(networkEndpoints[0].ipAddress)')
    if [[ -n "$PROJECT" ]]; then describe+=(--project="$PROJECT"); fi
    printf '%q ' "${describe[@]}"; echo
    MEGASCALE_COORDINATOR="$(if $DRY_RUN; then echo SLICE0_WORKER0_IP; else "${describe[@]}"; fi)"
  fi
  SLICE_ENV="export MEGASCALE_COORDINATOR_ADDRESS=$MEGASCALE_COORDINATOR:$MEGASCALE_PORT"
  SLICE_ENV+=" MEGASCALE_NUM_SLICES=$NUM_SLICES MEGASCALE_SLICE_ID=$1"
  SLICE_ENV+=" MEGASCALE_PORT=$MEGASCALE_PORT; "
}

# on_every_worker WORD...: runs the command WORD... on every worker of every node at once,
# one JAX job across the slices (each with its DCN settings), and waits for all of them.
on_every_worker() {
  local quoted node pid slice=0 status=0 pids=()
  quoted="$(printf '%q ' "$@")"
  while read -r node; do
    slice_env "$slice"
    if $DRY_RUN; then
      ssh_workers "$node" all "cd ~/$REMOTE_DIR && ${SLICE_ENV}$quoted"
    else
      ssh_workers "$node" all "cd ~/$REMOTE_DIR && ${SLICE_ENV}$quoted" &
      pids+=("$!")
    fi
    slice=$((slice + 1))
  done < <(nodes)
  for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
  return "$status"
}

# checkpoint_verb VERB: `mmpretrain VERB` (eval, sample) with EXTRA_ARGS on every worker
# (on_every_worker), which needs --workdir; DATA_DIR goes along as --config.data.data_dir
# when a --config is given (without one the run's own config.json is read).
checkpoint_verb() {
  local arg workdir="" command=(.venv/bin/mmpretrain "$1" "${EXTRA_ARGS[@]}")
  for arg in "${EXTRA_ARGS[@]}"; do
    case "$arg" in
      --workdir=*) workdir="${arg#--workdir=}" ;;
      --config=*) if [[ -n "$DATA_DIR" ]]; then command+=(--config.data.data_dir="$DATA_DIR"); fi ;;
    esac
  done
  [[ -n "$workdir" ]] || die "--workdir=DIR is required (the run's gs://… directory)"
  on_every_worker "${command[@]}"
}
