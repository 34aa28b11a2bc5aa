#!/usr/bin/env bash
# Follows the training log of one worker (default: worker 0 of the first node).
# shellcheck source=tpu_scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<USAGE
Usage: tpu_scripts/logs.sh [--dry-run] [--worker=N|all] [--lines=N] [--no-follow]

Shows the last lines of LOG_FILE ($LOG_FILE) on a worker and follows it (Ctrl-C stops
following; training goes on). --worker=all prints every worker's tail once.
USAGE
}

worker=0 lines=100 follow=true
parse_flags "$@"
for arg in "${EXTRA_ARGS[@]}"; do
  case "$arg" in
    --worker=*) worker="${arg#--worker=}" ;;
    --lines=*) lines="${arg#--lines=}" ;;
    --no-follow|--no_follow) follow=false ;;
    *) die "unknown argument $arg (see --help)" ;;
  esac
done
[[ "$worker" == all ]] && follow=false
tail_flags="-n $lines"
if $follow; then tail_flags+=" -F"; fi
ssh_workers "$(nodes | head -n 1)" "$worker" "tail $tail_flags $LOG_FILE"
