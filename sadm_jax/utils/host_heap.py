"""glibc malloc settings under which XLA:CPU reuses freed program temporaries, not new pages.

XLA:CPU allocates a compiled program's temporaries with `malloc` at every execution and frees
them at its end. By default they are one block (369 MB for the demo cDDPM train step, 3.0 GB for
the paper one at batch 4), which glibc maps afresh and unmaps again every time: the kernel then
zeroes and faults in every page at every step (90,000 minor faults per demo step, 747,000 per
paper step: 7-20 % of the step's time on a 2-core AMD EPYC Zen 4 VM; BENCHMARKS.md "Heap reuse",
which also shows an older CPU, Zen 1, where faults are cheap and the split steps slower).

The package's CPU train programs therefore split their temporaries into heaps of at most
`xla_flags.CPU_HEAP_BYTES` (a per-program XLA option, `xla_flags.train_compiler_options`), and
this module sets glibc so that blocks of that size stay with the process once freed:
- `M_MMAP_MAX = 0`: blocks come from malloc's heaps, never from a mapping of their own (a block
  above a thread arena's 64 MiB heap limit is still mapped: glibc has no other way);
- `M_TRIM_THRESHOLD` at its maximum and `M_TOP_PAD` = 64 MiB: freed heap memory is neither given
  back at the top of a heap nor a whole thread heap deleted, so the next step reuses it.
The cost: freed memory stays with the process (its resident size is its high-water mark), and
on CPUs where page faults are cheap the split steps can be slower (set the switch off there).
Only where the run is on CPU (`xla_flags.apply`); `SADM_CPU_HEAP_REUSE=0` (or
`SADM_XLA_CPU_DEFAULTS=0`) leaves glibc's defaults. Settings are process-wide and take effect at
once (`mallopt`), for the memory allocated from then on. Other C libraries: nothing is changed.
"""

from __future__ import annotations

import ctypes
import functools

ENV_SWITCH = "SADM_CPU_HEAP_REUSE"

# mallopt parameter numbers (glibc's malloc.h) and the values set.
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_MAX = -1, -2, -4
SETTINGS = {M_MMAP_MAX: 0, M_TRIM_THRESHOLD: 2**31 - 1, M_TOP_PAD: 64 * 2**20}


@functools.lru_cache(maxsize=None)
def _glibc():
  """The process's C library when it is glibc (it has `mallopt`), else None."""
  try:
    libc = ctypes.CDLL(None)
  except OSError:
    return None
  if not hasattr(libc, "gnu_get_libc_version") or not hasattr(libc, "mallopt"):
    return None
  libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
  libc.mallopt.restype = ctypes.c_int
  return libc


def apply() -> bool:
  """Sets `SETTINGS` with glibc's `mallopt`; True when all were taken (False: not glibc)."""
  libc = _glibc()
  if libc is None:
    return False
  return all(libc.mallopt(param, value) == 1 for param, value in SETTINGS.items())
