#!/usr/bin/env bash
# One host, N GPUs: a single process sees all of them and the ('data',) mesh spans them.
#
#   NUM_GPUS=4 launch/local_gpus.sh -- --config=configs/cddpm.py --workdir=runs/cddpm
#   NUM_GPUS=2 CUDA_VISIBLE_DEVICES=2,3 launch/local_gpus.sh -- --config=configs/cddpm.py --workdir=W
#
# Required: NUM_GPUS. Optional: CUDA_VISIBLE_DEVICES (default 0..NUM_GPUS-1; must list NUM_GPUS
# GPUs), PYTHON (default python), DRY_RUN=1 (print the command, run nothing). sadm_jax.main
# stops with one line when JAX sees fewer than NUM_GPUS GPUs (SADM_NUM_GPUS).
# Everything after `--` goes to `python -m sadm_jax.main` unchanged; paths are relative to the
# repository root.
set -euo pipefail

require() {  # a variable that must be set: one line naming it, exit 2 (like every usage error)
  [[ -n "${!1:-}" ]] || { echo "$1 is not set: $2" >&2; exit 2; }
}
require NUM_GPUS "set NUM_GPUS to the number of GPUs this run uses, e.g. NUM_GPUS=4"
if [[ ! "$NUM_GPUS" =~ ^[1-9][0-9]*$ ]]; then
  echo "NUM_GPUS=$NUM_GPUS: expected a positive integer" >&2
  exit 2
fi
if [[ "${1:-}" == "--" ]]; then shift; fi

if [[ -z "${CUDA_VISIBLE_DEVICES:-}" ]]; then
  CUDA_VISIBLE_DEVICES="$(seq -s, 0 $((NUM_GPUS - 1)))"
fi
IFS=, read -ra visible <<< "$CUDA_VISIBLE_DEVICES"
if (( ${#visible[@]} != NUM_GPUS )); then
  echo "CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES lists ${#visible[@]} GPU(s) but NUM_GPUS=$NUM_GPUS" >&2
  exit 2
fi
export CUDA_VISIBLE_DEVICES
export SADM_DISTRIBUTED=off  # exactly one process, even inside a multi-task Slurm allocation
export SADM_NUM_GPUS="$NUM_GPUS"  # sadm_jax.main stops when JAX sees fewer GPUs

cd "$(dirname "$0")/.."
cmd=("${PYTHON:-python}" -m sadm_jax.main "$@")
if [[ "${DRY_RUN:-0}" == "1" ]]; then
  echo "CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES SADM_DISTRIBUTED=off SADM_NUM_GPUS=$NUM_GPUS" \
       "$(printf '%q ' "${cmd[@]}")"
  exit 0
fi
exec "${cmd[@]}"
