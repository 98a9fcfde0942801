"""Benchmark: the per-step cost of training's SIGTERM agreement (`train.stopping.StopAgreement`) and the per-batch cost of reading a `together` block's board (`agreements.check_others`) with several processes.

    python -m benchmarks.stop_agreement [--processes=2] [--steps=1000] [--rounds=3] [--out=JSON]

Starts the processes on loopback (one CPU device each, `jax.distributed` through the package's
`distributed.initialize`), and times in each of them `--steps` calls of
`StopAgreement.stop_at(step, False)` — what the training loop adds to every step of a
multi-process run (one barrier and one key-value read through JAX's coordination service) —
`--rounds` times; then one call where process 1 asks to stop, which every process must see at
that same step. Then, inside an `agreements.together` block, `--steps` calls of
`agreements.check_others()` — what an evaluation's or predict's batch adds with several processes
(one key-value read) — `--rounds` times. Prints a table and writes JSON (every process's medians).
Loopback is a lower bound: a cluster's network adds its round-trip time to each call.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from benchmarks import machine

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse_args(argv=None) -> argparse.Namespace:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--processes", type=int, default=2)
  ap.add_argument("--steps", type=int, default=1000)
  ap.add_argument("--rounds", type=int, default=3)
  ap.add_argument("--out", default=os.path.join("benchmarks", "results",
                                                "stop_agreement_cpu.json"))
  ap.add_argument("--worker", default="", help=argparse.SUPPRESS)  # 'address,process_id,file'
  return ap.parse_args(argv)


def worker(args) -> None:
  """One process: the timed calls; writes its result to the file the parent named."""
  address, pid, out = args.worker.split(",")
  from sadm_jax import distributed
  distributed.initialize(distributed.Plan("config", dict(
      coordinator_address=address, num_processes=args.processes, process_id=int(pid))))
  from sadm_jax.train.stopping import StopAgreement
  stop = StopAgreement("benchmark")
  step, rounds = 0, []
  for _ in range(args.rounds):
    t0 = time.perf_counter()
    for _ in range(args.steps):
      step += 1
      assert stop.stop_at(step, False) == []
    rounds.append((time.perf_counter() - t0) / args.steps)
  step += 1
  asked = stop.stop_at(step, int(pid) == 1)  # process 1 asks: every process must see it here
  from sadm_jax import agreements
  board = []
  with agreements.together("the benchmark's batches"):
    for _ in range(args.rounds):
      t0 = time.perf_counter()
      for _ in range(args.steps):
        agreements.check_others()
      board.append((time.perf_counter() - t0) / args.steps)
  with open(out, "w") as f:
    json.dump({"process": int(pid), "per_step_s": rounds, "asked_at_last_step": asked,
               "board_read_s": board}, f)


def main(argv=None) -> None:
  args = parse_args(argv)
  if args.worker:
    worker(args)
    return
  import socket
  import tempfile
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    address = f"127.0.0.1:{s.getsockname()[1]}"
  tmp = tempfile.mkdtemp(prefix="stop_agreement_")
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": REPO}
  env.pop("XLA_FLAGS", None)
  files = [os.path.join(tmp, f"{p}.json") for p in range(args.processes)]
  logs = [open(os.path.join(tmp, f"{p}.log"), "w+") for p in range(args.processes)]
  procs = [subprocess.Popen([sys.executable, "-m", "benchmarks.stop_agreement",
                             f"--processes={args.processes}", f"--steps={args.steps}",
                             f"--rounds={args.rounds}", f"--worker={address},{p},{files[p]}"],
                            cwd=REPO, env=env, stdout=logs[p], stderr=subprocess.STDOUT)
           for p in range(args.processes)]
  codes = [p.wait(timeout=600) for p in procs]
  if any(codes):
    failed = next(k for k, c in enumerate(codes) if c)
    logs[failed].seek(0)
    sys.exit(f"a worker failed: exit codes {codes}; process {failed}'s last lines:\n"
             + "".join(logs[failed].readlines()[-20:]))
  for log in logs:
    log.close()
  results = [json.load(open(f)) for f in files]
  medians = [statistics.median(r["per_step_s"]) for r in results]
  boards = [statistics.median(r["board_read_s"]) for r in results]
  print(f"{'process':>8} {'ms per step (median of rounds)':>32} {'rounds (ms)':>30} "
        f"{'board read, ms per batch':>26}")
  for r, m, b in zip(results, medians, boards):
    print(f"{r['process']:>8} {m * 1e3:>32.3f} "
          f"{', '.join(f'{v * 1e3:.3f}' for v in r['per_step_s']):>30} {b * 1e3:>26.3f}")
  seen = [r["asked_at_last_step"] for r in results]
  print(f"a stop asked by process 1 seen at the same step by every process: "
        f"{all(s == [1] for s in seen)} ({seen})")
  out = {"machine": machine.machine_info(), "processes": args.processes, "steps": args.steps,
         "rounds": args.rounds, "per_step_ms_median": [m * 1e3 for m in medians],
         "board_read_ms_median": [b * 1e3 for b in boards],
         "results": results, "stop_seen_by_all": all(s == [1] for s in seen)}
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(out, f, indent=1)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
