"""A job of several processes for tests/test_distributed_exit.py: the start-up agreement fails on
process 1, which then takes `--slow` seconds to reach its exit (as one still writing a checkpoint
would); every process ends through `main.exit_now`, as the command line does.

    python -m tests.distributed_exit_job <process id> <process count> <port> [--slow S]
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def main() -> None:
  ap = argparse.ArgumentParser()
  ap.add_argument("pid", type=int)
  ap.add_argument("n", type=int)
  ap.add_argument("port", type=int)
  ap.add_argument("--slow", type=float, default=0.0)
  a = ap.parse_args()
  os.environ["JAX_PLATFORMS"] = "cpu"
  from sadm_jax import agreements, distributed
  distributed.initialize(distributed.plan(None, {
      "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{a.port}", "JAX_NUM_PROCESSES": str(a.n),
      "JAX_PROCESS_ID": str(a.pid)}))
  from sadm_jax import main as main_lib
  try:
    agreements.agree("process 1's own check failed" if a.pid == 1 else None)
  except ValueError as e:
    if a.pid == 1:
      time.sleep(a.slow)
    print(f"error: {e}", file=sys.stderr, flush=True)
    main_lib.exit_now(2)
  raise AssertionError("the agreement did not fail")


if __name__ == "__main__":
  main()
