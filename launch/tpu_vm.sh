#!/usr/bin/env bash
# Cloud TPU VM or pod slice: runs the same command on every worker over `gcloud ... ssh
# --worker=all`; each worker's process joins jax.distributed through JAX's Cloud TPU detection.
#
#   TPU_NAME=my-v5p-32 ZONE=us-east5-a launch/tpu_vm.sh \
#       -- --config=configs/cddpm.py --workdir=/mnt/shared/runs/cddpm
#
# Required: TPU_NAME, ZONE. Optional: PROJECT (gcloud --project), REMOTE_DIR (the checkout on
# every worker, relative to the home directory; default sadm_jax; its .venv is activated when
# present), PYTHON (default python), DRY_RUN=1 (print the gcloud command, run nothing).
# Everything after `--` goes to `python -m sadm_jax.main` unchanged. Paths (--workdir, data and
# cache dirs, run workdirs) are file-system paths that every worker sees the same (a Filestore/NFS
# or gcsfuse mount): sadm_jax does not open URLs, and gs://b/w would be a local folder gs:/b/w on
# each worker (a multi-host evaluation then stops with "is the workdir shared by all hosts?").
set -euo pipefail

require() {  # a variable that must be set: one line naming it, exit 2 (like every usage error)
  [[ -n "${!1:-}" ]] || { echo "$1 is not set: $2" >&2; exit 2; }
}
require TPU_NAME "set TPU_NAME to the TPU VM / pod slice name"
require ZONE "set ZONE to the zone of the TPU, e.g. ZONE=us-central2-b"
if [[ "${1:-}" == "--" ]]; then shift; fi
for arg in "$@"; do
  if [[ "$arg" == --*=*://* ]]; then
    echo "$arg: sadm_jax reads and writes file-system paths, not URLs; use a directory every" \
         "worker mounts (Filestore/NFS, gcsfuse)" >&2
    exit 2
  fi
done
REMOTE_DIR="${REMOTE_DIR:-sadm_jax}"

remote="cd $(printf '%q' "$REMOTE_DIR") && { [ ! -f .venv/bin/activate ] || . .venv/bin/activate; }"
# JAX_PLATFORMS=tpu: a worker without libtpu (jax[tpu] not installed) stops with one line, where
# JAX would fall back to its CPU with a warning and the job would run there
remote+=" && SADM_DISTRIBUTED=auto JAX_PLATFORMS=tpu exec $(printf '%q ' "${PYTHON:-python}" -m sadm_jax.main "$@")"
cmd=(gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --worker=all --command="$remote")
if [[ -n "${PROJECT:-}" ]]; then cmd+=(--project="$PROJECT"); fi

if [[ "${DRY_RUN:-0}" == "1" ]]; then
  printf '%q ' "${cmd[@]}"
  echo
  exit 0
fi
command -v gcloud > /dev/null || { echo "gcloud not found: install the Google Cloud SDK" >&2; exit 2; }
exec "${cmd[@]}"
