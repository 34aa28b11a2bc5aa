#!/usr/bin/env bash
# Stops training on every worker with SIGTERM: the run saves a checkpoint and exits.
# shellcheck source=tpu_scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<USAGE
Usage: tpu_scripts/stop.sh [--dry-run]

Sends SIGTERM to the trainer on every worker of every node (its pid is in train.pid,
written by launch.sh's worker_train.sh; nothing else is signalled). The processes agree
on a step through JAX's preemption service, save one checkpoint and exit; launch.sh with
the same flags resumes from it. The TPU keeps running (delete.sh releases it).
USAGE
}

parse_flags "$@"
[[ ${#EXTRA_ARGS[@]} -eq 0 ]] || die "unknown arguments: ${EXTRA_ARGS[*]} (see --help)"
while read -r node; do
  ssh_workers "$node" all \
      "cd ~/$REMOTE_DIR && if [ -f train.pid ]; then kill -TERM \"\$(cat train.pid)\" || true; fi"
done < <(nodes)
