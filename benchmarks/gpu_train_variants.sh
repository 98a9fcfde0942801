#!/usr/bin/env bash
# Paper-size train steps on one GPU with benchmarks.suite: bf16 batch 32 with the UNet's
# GroupNorm -> [FiLM] -> SiLU backward as autodiff of the composition (plain) and as the
# recomputing VJP (recompute), each with a 2-step kernel profile, then float32 (package default).
#   benchmarks/gpu_train_variants.sh OUT_DIR [TAG]      e.g. benchmarks/gpu_train_variants.sh $OUT h200
# Each run is bounded by `timeout` (seconds: T_FIRST for the first, T_BF16, T_F32) and writes its
# JSON (also when cut) and log to OUT_DIR. On a fresh H200 the first run's cDDPM compilation,
# autotuning every convolution, took over 3 minutes (a 195 s limit cut it; BENCHMARKS.md).
# The runs share a JAX compilation cache (JAX_COMPILATION_CACHE_DIR, default
# /tmp/sadm_jax_gpu_cache), so a later run may reuse convolution autotuning results: compare
# compile times within a run, not across runs.
set -u
out=${1:?usage: benchmarks/gpu_train_variants.sh OUT_DIR [TAG]}
tag=${2:-gpu}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-/tmp/sadm_jax_gpu_cache}
common=(--config=paper --what=cddpm_train,sadm_train --steps=10 --warmup=2)
run() {  # name seconds suite-args...
  local name=$1 limit=$2; shift 2
  echo "=== $name ($(date -u +%T), limit ${limit} s)"
  timeout "$limit" python3 -m benchmarks.suite "${common[@]}" "$@" --tag="${tag}_$name" \
    --out="$out/suite_${tag}_$name.json" >"$out/log_$name.txt" 2>&1
  echo "exit $? ($(date -u +%T))"
  grep -E "matmul peak|ms/step|Error|error|failed" "$out/log_$name.txt" | head -20
}
run bf16_plain "${T_FIRST:-420}" --dtype=bfloat16 --norm_act=plain --profile=2
run bf16_recompute "${T_BF16:-200}" --dtype=bfloat16 --norm_act=recompute --profile=2
run f32_default "${T_F32:-170}" --dtype=float32
