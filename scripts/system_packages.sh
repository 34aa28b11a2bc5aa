#!/usr/bin/env bash
# Debian packages mmpretrain uses but can run without:
#   libjemalloc2            the allocator that stops XLA:CPU re-faulting its step buffers
#                           (mmpretrain/hostalloc.py)
#   fonts-noto-color-emoji  the emoji_captions dataset (emoji images + Unicode names)
# Never fails the install: without apt or root rights it says what to install and exits 0.
set -uo pipefail
PACKAGES=(libjemalloc2 fonts-noto-color-emoji)
missing=()
for package in "${PACKAGES[@]}"; do
  dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
done
[ ${#missing[@]} -eq 0 ] && exit 0

SUDO=""
if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
  SUDO="sudo -n"
fi
if ! command -v apt-get >/dev/null || { [ "$(id -u)" != 0 ] && [ -z "$SUDO" ]; }; then
  echo "scripts/system_packages.sh: please install ${missing[*]} (optional, see the script)"
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get install -y -q "${missing[@]}" >/dev/null 2>&1 \
  || { $SUDO apt-get update -q >/dev/null 2>&1 \
       && $SUDO apt-get install -y -q "${missing[@]}" >/dev/null 2>&1; } \
  || echo "scripts/system_packages.sh: apt-get could not install ${missing[*]}; continuing"
exit 0
