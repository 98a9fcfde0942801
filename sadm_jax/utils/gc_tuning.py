"""Python garbage-collector settings for a run (one place): fewer collections while JAX traces."""

from __future__ import annotations

# Tracing and lowering a network allocate millions of short-lived Python objects. At Python's
# default generation-0 threshold (700) the collector ran ≈ 2,500 times in the tiny demo job and
# took ≈ 8 % of its CPU with a warm compilation cache (BENCHMARKS.md, "Test suite, seventeenth session"); most of
# that is the full collections, which walk every object JAX, Flax and the other libraries created
# at import. `apply()` moves those import-time objects out of the collector's reach (`gc.freeze`)
# and raises the generation-0 threshold, so collections are ≈ 40× rarer. Reference cycles are
# still collected; only later. Set SADM_GC_DEFAULTS=0 to leave the collector as Python sets it.

import gc
import os

ENV_SWITCH = "SADM_GC_DEFAULTS"
GEN0_THRESHOLD = 20_000  # allocations (net) between generation-0 collections; Python's is 700


def apply(environ: dict | None = None) -> bool:
  """Freezes the objects alive now and raises the generation-0 threshold to GEN0_THRESHOLD
  (a higher one already set is kept). Returns False, changing nothing, when SADM_GC_DEFAULTS=0."""
  env = os.environ if environ is None else environ
  if env.get(ENV_SWITCH, "1").strip() == "0":
    return False
  gc.freeze()
  gen0, gen1, gen2 = gc.get_threshold()
  gc.set_threshold(max(gen0, GEN0_THRESHOLD), gen1, gen2)
  return True
