#!/usr/bin/env bash
# Runs on each TPU worker, started there by launch.sh (not a command for your machine):
#   bash tpu_scripts/worker_train.sh LOG_DIR VERB [mmpretrain VERB flags ...]
# VERB is train or a representation stage (train-rae, …). The trainer runs in the
# background with its pid in train.pid (what stop.sh signals); its output goes to this
# script's output and, through mmpretrain.logship, to LOG_DIR/<hostname>.log, which may be
# gs://… so the log outlives a preempted VM.
set -uo pipefail
log_dir="$1" verb="$2"
shift 2
.venv/bin/mmpretrain "$verb" "$@" > >(.venv/bin/python -m mmpretrain.logship \
    "$log_dir/$(hostname).log") 2>&1 &
echo $! > train.pid
wait $!
