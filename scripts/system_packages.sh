#!/usr/bin/env bash
# System packages mmpretrain benefits from but can run without (see mmpretrain/hostalloc.py):
# libjemalloc2, the allocator that stops XLA:CPU re-faulting its step buffers.
# Never fails the install: without apt or root rights it prints what to install and exits 0.
set -uo pipefail
if ldconfig -p 2>/dev/null | grep -q 'libjemalloc\.so\.2'; then
  exit 0
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then
  if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then SUDO="sudo -n"; fi
fi
if command -v apt-get >/dev/null && { [ "$(id -u)" = 0 ] || [ -n "$SUDO" ]; }; then
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get install -y -q libjemalloc2 >/dev/null 2>&1 \
    || { $SUDO apt-get update -q >/dev/null 2>&1 && $SUDO apt-get install -y -q libjemalloc2 >/dev/null 2>&1; } \
    || echo "scripts/system_packages.sh: apt-get could not install libjemalloc2; continuing without it"
else
  echo "scripts/system_packages.sh: install libjemalloc2 (or your OS's jemalloc) for faster CPU training"
fi
exit 0
