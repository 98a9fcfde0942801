"""`python -m sadm_jax.main` in which process 1 dies without a word (SIGKILL, as the OOM killer) as it starts its share of predict's scans (launched by tests/evaluate/test_predict_processes.py).

    python -m tests.evaluate.killed_main <sadm_jax.main arguments>
"""

from __future__ import annotations

import os
import runpy
import signal
import sys


def main() -> None:
  from sadm_jax import agreements
  if "--config.distributed.process_id=1" in sys.argv:
    # the first batch's look at the board: in the share, before any output of this process
    agreements.check_others = lambda: os.kill(os.getpid(), signal.SIGKILL)
  sys.argv[0] = "sadm_jax.main"
  runpy.run_module("sadm_jax.main", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
  main()
