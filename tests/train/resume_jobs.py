"""Background jobs of the resume tests: a tiny cDDPM killed mid-training and resumed; a copy whose newest checkpoint is damaged, resumed.

    python -m tests.train.resume_jobs sigkill --data=D --workdir=W
    python -m tests.train.resume_jobs damaged --data=D --reference=R --workdir=W

Each runs the CLI (`python -m sadm_jax.main`, the tiny cDDPM of `tests.helpers.tiny_cddpm_args`)
the way a user's run would be interrupted or damaged, and writes what happened to
W/outcome.json (the runs' return codes and output; the damaged step's file snapshot); the
resumed run is W/run. The test session starts them in the background (tests/conftest.py,
BACKGROUND_RUNS) and the tests check the outcome and the resumed run
(tests/train/test_cddpm_spark.py, tests/train/test_workdir.py). Imports no JAX.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import shutil
import signal
import subprocess
import sys
import time

from tests.helpers import REPO, tiny_cddpm_args

KILL_AT = 5  # the SIGKILL job kills its run once it has logged this step (of 16)
TIMEOUT_S = 900.0


def snapshot(root: str) -> dict:
  """{relative path: (size, mtime_ns)} of every file and directory under `root`."""
  out = {}
  for d, dirs, files in os.walk(root):
    for n in dirs + files:
      p = os.path.join(d, n)
      st = os.stat(p)
      out[os.path.relpath(p, root)] = (st.st_size if n in files else 0, st.st_mtime_ns
                                       if n in files else 0)
  return out


def damage(work: str, step: int, kind: str) -> None:
  """Damages checkpoint `step` of run `work`: 'truncated_array' (its largest array file cut to
  half), 'missing_metadata' or 'empty_step_dir'."""
  d = os.path.join(work, "checkpoints", str(step))
  if kind == "truncated_array":
    arrays = [os.path.join(r, f) for r, _, fs in os.walk(os.path.join(d, "state")) for f in fs
              if os.sep + "d" + os.sep in os.path.join(r, f)]
    biggest = max(arrays, key=os.path.getsize)
    with open(biggest, "r+b") as f:
      f.truncate(os.path.getsize(biggest) // 2)
  elif kind == "missing_metadata":
    os.remove(os.path.join(d, "meta", "metadata"))
  elif kind == "empty_step_dir":
    shutil.rmtree(d)
    os.makedirs(d)
  else:
    raise ValueError(kind)


def env() -> dict:
  """The CLI runs' environment: this process's (the test session's XLA flags, 8 fake devices, and
  its compilation cache), unbuffered, on CPU."""
  return {**os.environ, "PYTHONUNBUFFERED": "1", "JAX_PLATFORMS": "cpu"}


def cli(data: str, workdir: str, steps: int, checkpoint_every: int, *extra: str) -> list[str]:
  """`python -m sadm_jax.main` of the tiny cDDPM run in `workdir` (`tests.helpers.tiny_cddpm_args`)
  with `extra` arguments."""
  return [sys.executable, "-m", "sadm_jax.main", f"--workdir={workdir}",
          *tiny_cddpm_args(data, steps, checkpoint_every), *extra]


_JOB_PID = os.getpid()


def _die_with_parent() -> None:
  """In the child before exec: SIGKILL it when this job dies (the session's stop kills the job's
  process group, and the run has a group of its own); exits at once if the job died already."""
  ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
  if os.getppid() != _JOB_PID:
    os._exit(1)


def sigkill(data: str, workdir: str) -> dict:
  """Starts the run for 16 steps (checkpoints every 2), SIGKILLs it (its whole process group:
  data workers too) once it logged step KILL_AT, then runs it again for 8 steps."""
  run = os.path.join(workdir, "run")
  proc = subprocess.Popen(cli(data, run, 16, 2), cwd=REPO, env=env(), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, process_group=0,
                          preexec_fn=_die_with_parent)
  killed_at, seen = None, []
  try:
    deadline = time.time() + TIMEOUT_S
    for line in proc.stdout:
      seen.append(line)
      if line.startswith(f"step {KILL_AT}/16"):
        os.killpg(proc.pid, signal.SIGKILL)
        killed_at = KILL_AT
        break
      if time.time() > deadline:
        break
    proc.wait(timeout=60)
  finally:
    if proc.poll() is None:
      os.killpg(proc.pid, signal.SIGKILL)
      proc.wait()
  res = subprocess.run(cli(data, run, 8, 2), cwd=REPO, env=env(), capture_output=True,
                       text=True, timeout=TIMEOUT_S, preexec_fn=_die_with_parent)
  return {"killed_at": killed_at, "killed_returncode": proc.returncode,
          "killed_output_tail": "".join(seen)[-3000:], "returncode": res.returncode,
          "stdout": res.stdout, "stderr": res.stderr}


def damaged(data: str, reference: str, workdir: str) -> dict:
  """A copy of `reference` (8 steps, checkpoints at 4 and 8) with a truncated array file in
  step 8, run again for 8 steps by the CLI."""
  run = os.path.join(workdir, "run")
  shutil.copytree(reference, run)
  damage(run, 8, "truncated_array")
  before = snapshot(os.path.join(run, "checkpoints", "8"))
  res = subprocess.run(cli(data, run, 8, 4), cwd=REPO, env=env(), capture_output=True,
                       text=True, timeout=TIMEOUT_S, preexec_fn=_die_with_parent)
  return {"damaged_snapshot": before, "returncode": res.returncode, "stdout": res.stdout,
          "stderr": res.stderr}


def read_outcome(workdir: str) -> dict:
  """W/outcome.json of a finished job (snapshots as {path: (size, mtime_ns)}, as `snapshot`)."""
  with open(os.path.join(workdir, "outcome.json"), encoding="utf-8") as f:
    out = json.load(f)
  if "damaged_snapshot" in out:
    out["damaged_snapshot"] = {k: tuple(v) for k, v in out["damaged_snapshot"].items()}
  return out


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("job", choices=("sigkill", "damaged"))
  ap.add_argument("--data", required=True)
  ap.add_argument("--reference", default="", help="damaged: the 8-step run to copy")
  ap.add_argument("--workdir", required=True)
  args = ap.parse_args(argv)
  os.makedirs(args.workdir, exist_ok=True)
  out = (sigkill(args.data, args.workdir) if args.job == "sigkill"
         else damaged(args.data, args.reference, args.workdir))
  tmp = os.path.join(args.workdir, "outcome.json.tmp")
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(out, f)
  os.replace(tmp, os.path.join(args.workdir, "outcome.json"))
  return 0


if __name__ == "__main__":
  sys.exit(main())
