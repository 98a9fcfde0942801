"""Opt-in log of JAX's tracing, lowering and compilation times (`SADM_COMPILE_LOG=<file>`), one JSON line per event.

Set the variable before a run (or the test suite: child processes inherit it) and summarise the
file with `python -m benchmarks.compile_profile <file>`. Each line is
`{"pid", "event": "trace"|"lower"|"compile"|"cache_read", "fun": <jitted function>, "s": seconds,
"test": <pytest node id or "">}`; `compile` is XLA's backend compilation of one program (a hit
in the persistent compilation cache logs `cache_read` instead). Appends are one `write` of one
line, so concurrent processes do not interleave within a line.
"""

from __future__ import annotations

import json
import os

ENV = "SADM_COMPILE_LOG"
EVENTS = {
    "/jax/core/compile/jaxpr_trace_duration": "trace",
    "/jax/core/compile/jaxpr_to_mlir_module_duration": "lower",
    "/jax/core/compile/backend_compile_duration": "compile",
    "/jax/compilation_cache/cache_retrieval_time_sec": "cache_read",
}
_installed: dict[str, object] = {}  # file -> its listener


def install(path: str | None = None) -> str | None:
  """Starts logging to `path` (default: `$SADM_COMPILE_LOG`); returns the file, None when off.

  Idempotent within a process (a second call with the same file adds no second listener).
  Raises OSError when the file cannot be opened for appending; a write that fails later (the
  disk filled up) is dropped: a diagnostic log never stops a run.
  """
  path = path or os.environ.get(ENV, "").strip()
  if not path:
    return None
  path = os.path.abspath(path)
  if path in _installed:
    return path
  os.close(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644))
  import jax

  def listener(event: str, duration: float, **kwargs) -> None:
    kind = EVENTS.get(event)
    if kind is None:
      return
    test = os.environ.get("PYTEST_CURRENT_TEST", "").rsplit(" (", 1)[0]
    line = json.dumps({"pid": os.getpid(), "event": kind, "fun": str(kwargs.get("fun_name", "")),
                       "s": round(float(duration), 4), "test": test}) + "\n"
    try:
      fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
      try:
        os.write(fd, line.encode())
      finally:
        os.close(fd)
    except OSError:
      pass

  jax.monitoring.register_event_duration_secs_listener(listener)
  _installed[path] = listener
  return path


def uninstall(path: str) -> None:
  """Stops logging to `path` (no-op when it was not installed)."""
  listener = _installed.pop(os.path.abspath(path), None)
  if listener is not None:
    import jax
    jax.monitoring.unregister_event_duration_listener(listener)
