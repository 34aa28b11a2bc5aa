#!/usr/bin/env bash
# Starts `mmpretrain train` (or, with --verb, a representation stage such as train-rae) on
# every worker of every slice, in the background, logging to LOG_FILE and WORKDIR/logs.
# Re-running it after a preemption resumes from the newest checkpoint in WORKDIR.
# shellcheck source=tpu_scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<USAGE
Usage: tpu_scripts/launch.sh --config=FILE --workdir=gs://BUCKET/RUN [--dry-run] \\
           [--verb=train-rae] [--config.key=value ...] [other mmpretrain VERB flags]

First checks, on worker 0, that the data the config reads is there (\`mmpretrain prepare
--check\`; prepare.sh writes it) and stops if not. Then runs, on every worker
(--worker=all) of every node,
  cd ~/REMOTE_DIR && .venv/bin/mmpretrain VERB --config=FILE --workdir=DIR ...
detached (tpu_scripts/worker_train.sh), VERB being train or the representation stage that
--verb names (train-rae, train-encoder, train-vae, train-classifier), output in LOG_FILE
($LOG_FILE) on the worker and in DIR/logs/<worker hostname>.log (published in parts).
The workers find each other through jax.distributed on the TPU VM. With NUM_SLICES > 1
each slice gets the DCN settings (MEGASCALE_COORDINATOR_ADDRESS = slice 0's first
worker, MEGASCALE_NUM_SLICES, MEGASCALE_SLICE_ID, MEGASCALE_PORT). DATA_DIR, when set, is
passed as --config.data.data_dir. A killed or preempted run continues where it stopped:
run the same command again (after tpu_scripts/create.sh if the TPU was reclaimed).
USAGE
}

parse_flags "$@"
config="" workdir="" verb=train train=()
for arg in "${EXTRA_ARGS[@]}"; do
  case "$arg" in
    --verb=*) verb="${arg#--verb=}"; continue ;;
    --config=*) config="${arg#--config=}" ;;
    --workdir=*) workdir="${arg#--workdir=}" ;;
  esac
  train+=("$arg")
done
case "$verb" in train|train-rae|train-encoder|train-vae|train-classifier) ;; *)
  die "--verb=$verb: use train, train-rae, train-encoder, train-vae or train-classifier" ;; esac
[[ -n "$config" ]] || die "--config=FILE is required (a config file of the checkout)"
[[ -n "$workdir" ]] || die "--workdir=DIR is required (gs://… so every worker sees it)"
check=(.venv/bin/mmpretrain prepare --check)
for arg in "${EXTRA_ARGS[@]}"; do
  case "$arg" in --config=*|--config.*) check+=("$arg") ;; esac
done
if [[ -n "$DATA_DIR" ]]; then
  train+=(--config.data.data_dir="$DATA_DIR")
  check+=(--config.data.data_dir="$DATA_DIR")
fi
ssh_workers "$(nodes | head -n 1)" 0 "cd ~/$REMOTE_DIR && $(printf '%q ' "${check[@]}")"
quoted="$(printf '%q ' bash tpu_scripts/worker_train.sh "$workdir/logs" "$verb" "${train[@]}")"

slice=0
while read -r node; do
  slice_env "$slice"
  ssh_workers "$node" all "cd ~/$REMOTE_DIR && ${SLICE_ENV}nohup $quoted> $LOG_FILE 2>&1 < /dev/null &"
  slice=$((slice + 1))
done < <(nodes)
