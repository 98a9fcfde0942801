"""FLOPs and memory of a program: XLA's analysis of a compiled program; conv + dot FLOPs of a jaxpr."""

from __future__ import annotations

import math
from typing import Any, Callable, Iterator

import jax

MEMORY_FIELDS = (  # (CompiledMemoryStats attribute, key in compiled_cost(...)["memory"])
    ("argument_size_in_bytes", "argument_bytes"),
    ("output_size_in_bytes", "output_bytes"),
    ("alias_size_in_bytes", "alias_bytes"),
    ("temp_size_in_bytes", "temp_bytes"),
    ("generated_code_size_in_bytes", "generated_code_bytes"),
)


# --------------------------------------------------------------------------- XLA's analysis


def _cost_dict(program) -> dict:
  """`program.cost_analysis()` as one dict ({} when the backend or stage reports nothing)."""
  try:
    cost = program.cost_analysis()
  except Exception:  # noqa: BLE001 — not every backend / stage implements it
    return {}
  if isinstance(cost, (list, tuple)):  # older jax: one dict per partition
    cost = cost[0] if cost else None
  return dict(cost) if cost else {}


def _memory_dict(program) -> dict[str, int]:
  """Per-device bytes from `program.memory_analysis()` ({} when unavailable, e.g. a Lowered)."""
  try:
    stats = program.memory_analysis()
  except Exception:  # noqa: BLE001
    return {}
  if stats is None:
    return {}
  memory = {key: int(getattr(stats, attr)) for attr, key in MEMORY_FIELDS
            if hasattr(stats, attr)}
  if len(memory) < len(MEMORY_FIELDS):
    return memory
  # Live at once, at most: inputs + outputs not aliased to (donated) inputs + scratch + code.
  memory["total_bytes"] = (memory["argument_bytes"] + memory["output_bytes"] -
                           memory["alias_bytes"] + memory["temp_bytes"] +
                           memory["generated_code_bytes"])
  peak = getattr(stats, "peak_memory_in_bytes", 0)
  if peak:  # the backend's own figure; XLA:CPU leaves the temporaries out of it
    memory["xla_peak_bytes"] = int(peak)
  return memory


def compiled_cost(compiled) -> dict[str, Any]:
  """XLA's cost and memory analysis of one compiled per-device program (a `jax.stages.Compiled`).

  A `Lowered` works too (unoptimised HLO: FLOPs only, no memory). Returns
    flops: FLOPs of one call on one device (float), None when the backend reports none;
    bytes_accessed: bytes read + written by one call on one device (float), or None;
    memory: per-device bytes (int), {} when unavailable: argument_bytes, output_bytes,
      alias_bytes (outputs sharing a donated input's buffer), temp_bytes, generated_code_bytes,
      total_bytes = argument + output − alias + temp + generated code, and xla_peak_bytes (the
      backend's own peak, only when it reports one).
  XLA counts a loop body (scan, lax.map, while) once, and on GPU leaves out cuDNN convolutions;
  `matmul_flops` counts those.
  """
  cost = _cost_dict(compiled)
  flops, accessed = cost.get("flops"), cost.get("bytes accessed")
  return {"flops": None if flops is None else float(flops),
          "bytes_accessed": None if accessed is None else float(accessed),
          "memory": _memory_dict(compiled)}


def forward_flops(fn: Callable, *args) -> float:
  """FLOPs of one call `fn(*args)` (jitted, lowered and compiled here; args may be abstract).

  From XLA's cost analysis of the compiled program (conv, matmul, elementwise); NaN when the
  backend reports none.
  """
  flops = compiled_cost(jax.jit(fn).lower(*args).compile())["flops"]
  return float("nan") if flops is None else flops


# ------------------------------------------------------------------------ conv + dot FLOPs (jaxpr)


def _prod(xs) -> int:
  return int(math.prod(int(x) for x in xs))


def _sub_jaxprs(value) -> Iterator[Any]:
  """Jaxprs held by an equation parameter (a jaxpr, a closed jaxpr, or a tuple of them)."""
  if hasattr(value, "eqns"):
    yield value
  elif hasattr(value, "jaxpr") and hasattr(value.jaxpr, "eqns"):
    yield value.jaxpr
  elif isinstance(value, (tuple, list)):
    for v in value:
      yield from _sub_jaxprs(v)


def matmul_flops(jaxpr) -> float:
  """2 × multiply-adds of every dot_general and conv_general_dilated in `jaxpr` (nested too).

  `jaxpr`: a Jaxpr or ClosedJaxpr (`jax.make_jaxpr(fn)(*args)`). A dot counts 2 × output
  elements × contracted size (2·M·N·K for [M, K] @ [K, N]); a convolution 2 × output elements ×
  window × input features of the kernel (input dilation included, as XLA counts it). A scan
  body (lax.scan, lax.map, fori_loop with static bounds) counts `length` times, a cond its
  costliest branch, a while body once. Backend-independent; unlike XLA's cost analysis it
  multiplies loop bodies by their trip count and includes cuDNN convolutions.
  """
  jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
  total = 0.0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == "dot_general":
      (lhs_contract, _), _ = eqn.params["dimension_numbers"]
      lhs = eqn.invars[0].aval.shape
      total += 2.0 * _prod(eqn.outvars[0].aval.shape) * _prod(lhs[d] for d in lhs_contract)
    elif name == "conv_general_dilated":
      rhs = eqn.invars[1].aval.shape
      rhs_spec = eqn.params["dimension_numbers"].rhs_spec  # (out, in, *spatial)
      window = _prod(rhs[d] for d in rhs_spec[2:]) * rhs[rhs_spec[1]]
      total += 2.0 * _prod(eqn.outvars[0].aval.shape) * window
    else:
      for key, value in eqn.params.items():
        counts = [matmul_flops(j) for j in _sub_jaxprs(value)]
        if not counts:
          continue
        if name == "cond" and key == "branches":
          total += max(counts)
        elif name == "scan":
          total += sum(counts) * int(eqn.params.get("length", 1))
        else:
          total += sum(counts)
  return total


def traced_matmul_flops(fn: Callable, *args) -> float:
  """`matmul_flops` of `fn(*args)`'s jaxpr: traced only, nothing compiled (args may be
  `jax.ShapeDtypeStruct`s). For a jitted SPMD step this is the global (all devices) count.

  A jitted `fn` is traced as the top-level program (`fn.trace`), as it runs: `jax.make_jaxpr`
  would nest it, and a nested jit may not carry `compiler_options` (the CPU train steps' heap
  split, `xla_flags.train_compiler_options`)."""
  trace = getattr(fn, "trace", None)
  jaxpr = trace(*args).jaxpr if callable(trace) else jax.make_jaxpr(fn)(*args)
  return matmul_flops(jaxpr)


def largest_value_bytes(jaxpr) -> int:
  """Bytes of the largest value an equation of `jaxpr` (nested too) produces: a lower bound on
  the largest temporary buffer of its compiled program (global shapes for a jitted SPMD step)."""
  jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
  largest = 0
  for eqn in jaxpr.eqns:
    for v in eqn.outvars:
      aval = getattr(v, "aval", None)
      if hasattr(aval, "shape") and hasattr(aval, "dtype"):
        largest = max(largest, _prod(aval.shape) * aval.dtype.itemsize)
    for value in eqn.params.values():
      for j in _sub_jaxprs(value):
        largest = max(largest, largest_value_bytes(j))
  return largest
