"""The persistent XLA compilation cache, on by default for `python -m sadm_jax.main`: a re-run, a resumed run or a sweep member whose program was compiled before skips compilation."""

from __future__ import annotations

import os
import sys
from typing import MutableMapping

from sadm_jax.utils import io

ENV_SWITCH = "SADM_COMPILATION_CACHE"  # "0": off; a directory: use it instead of the default
JAX_ENV = "JAX_COMPILATION_CACHE_DIR"  # JAX's own setting; when set, it wins
# No size limit is set: JAX's LRU eviction (JAX_COMPILATION_CACHE_MAX_SIZE) needs the `filelock`
# package, without which every cache read fails. Entries are ~0.1–10 MB per program.


def default_dir(environ: MutableMapping[str, str]) -> str:
  """`$XDG_CACHE_HOME/sadm_jax/xla` (`~/.cache/sadm_jax/xla` when XDG_CACHE_HOME is unset)."""
  base = environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "sadm_jax", "xla")


def apply(environ: MutableMapping[str, str] | None = None) -> str | None:
  """Turns the cache on (before or after JAX is imported); returns its directory, None when off.

  JAX keys each entry by the program, the compile options, the XLA flags and the device, so a
  hit is the same executable a fresh compilation would give: results do not change.
  """
  env = os.environ if environ is None else environ
  path = env.get(JAX_ENV, "").strip()
  if not path:
    switch = env.get(ENV_SWITCH, "").strip()
    if switch == "0":
      return None
    path = os.path.abspath(os.path.expanduser(switch)) if switch else default_dir(env)
    env[JAX_ENV] = path  # read by JAX when it is imported (here: also by child processes)
  if environ is None and "jax" in sys.modules:  # JAX already imported: set it directly too
    import jax
    jax.config.update("jax_compilation_cache_dir", path)
  return path


def problem(path: str | None) -> str | None:
  """Why the cache directory `path` (what `apply` returned) cannot be used, or None: a path that
  is (or lies under) a file would make every compilation warn instead of caching."""
  node = io.file_in_the_way(path) if path else None
  if node is None:
    return None
  return (f"compilation cache {path}: {node} is a file, not a directory (set {ENV_SWITCH} or "
          f"{JAX_ENV} to a directory, or {ENV_SWITCH}=0 to turn the cache off)")
