"""`python -m sadm_jax.main` for the command-line error tests, and their one `error:` line."""

import os
import subprocess
import sys

from tests.helpers import REPO

ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "JAX_PLATFORMS": "cpu",
       "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}


def run_main(*args, config="configs/cddpm.py:tiny", env=None):
  """`python -m sadm_jax.main --config=<config> *args` with ENV plus `env`."""
  cmd = [sys.executable, "-m", "sadm_jax.main", f"--config={config}", *args]
  return subprocess.run(cmd, cwd=REPO, env={**ENV, **(env or {})}, capture_output=True,
                        text=True, timeout=300)


def one_error(res) -> str:
  """The single `error:` line; nothing else on stderr (no absl `E…` duplicate, no traceback)."""
  assert res.returncode == 2, (res.returncode, res.stderr[-3000:])
  lines = [l for l in res.stderr.splitlines() if l.strip()]
  assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr[-3000:]
  return lines[0]
