# Settings shared by every tpu_scripts/*.sh. Each one can be set in the environment
# (ZONE=europe-west4-a tpu_scripts/create.sh) or in a file named by TPU_ENV that is read
# instead of this one. The scripts' --dry-run prints the exact commands these produce.
# shellcheck shell=bash disable=SC2034  # read by the scripts that source this file

PROJECT="${PROJECT:-}"                     # gcloud project ('' = gcloud's configured one)
ZONE="${ZONE:-us-central2-b}"
TPU_NAME="${TPU_NAME:-mmpretrain}"         # the TPU VM, or the queued resource and its nodes
ACCELERATOR_TYPE="${ACCELERATOR_TYPE:-v4-32}"   # v4-*, v5litepod-* (v5e), v5p-*, v6e-*
RUNTIME_VERSION="${RUNTIME_VERSION:-}"     # '' = the usual image of the accelerator generation
CAPACITY="${CAPACITY:-on-demand}"          # on-demand | spot | preemptible (TPU VM only)
QUEUED="${QUEUED:-false}"                  # true = request a queued resource (multislice: always)
NUM_SLICES="${NUM_SLICES:-1}"              # > 1: multislice over DCN, nodes TPU_NAME-0..N-1
MEGASCALE_PORT="${MEGASCALE_PORT:-8080}"   # DCN coordinator port of a multislice run

REPO_URL="${REPO_URL:-}"                   # '' = setup.sh copies this checkout; or a git URL
BRANCH="${BRANCH:-main}"                   # with REPO_URL
REMOTE_DIR="${REMOTE_DIR:-mmpretrain}"     # the code on every worker (relative to $HOME)
PYTHON_VERSION="${PYTHON_VERSION:-3.11}"   # uv installs it on the workers (images ship 3.10)
DATA_DIR="${DATA_DIR:-}"                   # e.g. gs://BUCKET/mmpretrain/data ('' = config's)
LOG_FILE="${LOG_FILE:-/tmp/mmpretrain-train.log}"   # on every worker
