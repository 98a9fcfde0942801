"""Runs sweep members in dependency order, resumably: W/<member>/{config.json, log.txt, DONE}."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import time
import traceback
from typing import Any, Callable, Mapping, Sequence

import ml_collections

from sadm_jax.sweeps.members import (REPO, Member, check_member_config, check_member_resume,
                                      check_member_workdir, main_command, member_config,
                                      ordered)
from sadm_jax.utils import io, signals

DONE = "DONE"
INTERRUPTED = 130  # sadm_jax.main's exit code after Ctrl-C (128 + SIGINT)
INTERRUPT_GRACE_S = 60  # how long a member interrupted with the sweep (Ctrl-C) may take to stop



# runner(member, config, member workdir, `python -m sadm_jax.main` command) -> succeeded
Runner = Callable[[Member, ml_collections.ConfigDict, str, Sequence[str]], bool]


def process_id(environ: Mapping[str, str] | None = None) -> int:
  """This process's index in its launcher (JAX_PROCESS_ID, else SLURM_PROCID; 0 when neither
  is set), read without initialising JAX."""
  environ = os.environ if environ is None else environ
  for var in ("JAX_PROCESS_ID", "SLURM_PROCID"):
    if environ.get(var, "").strip():
      return int(environ[var])
  return 0


def is_primary(environ: Mapping[str, str] | None = None) -> bool:
  """Process 0 of a launcher: it alone writes a member's config.json and DONE."""
  return process_id(environ) == 0


def log_path(mdir: str, environ: Mapping[str, str] | None = None) -> str:
  """W/m/log.txt for process 0, W/m/log.<p>.txt for process p of a multi-process member (one
  file per process: several hosts appending to one file interleave, on NFS even corrupt it)."""
  p = process_id(environ)
  return os.path.join(mdir, "log.txt" if p == 0 else f"log.{p}.txt")


def run_subprocess(member: Member, config, mdir: str, command: Sequence[str]) -> bool:
  """Runs the member as `python -m sadm_jax.main ...`, output appended to `log_path(mdir)`."""
  if not isinstance(member.config, str):
    raise ValueError(f"member {member.name} has an in-memory config: run it in-process")
  log = log_path(mdir)
  with open(log, "a", encoding="utf-8") as f:
    f.write(f"$ {shlex.join(command)}\n")
    f.flush()
    proc = subprocess.Popen(list(command), cwd=REPO, stdout=f, stderr=subprocess.STDOUT,
                            env={**os.environ, signals.PARENT_VAR: str(os.getpid())})
    try:
      rc = proc.wait()
    except KeyboardInterrupt as e:  # Ctrl-C reached the member too: let it stop at a whole file
      # SIGTERM to the sweep alone (`kill <pid>`, `signals.terminate_as_interrupt`): the member,
      # in its process group but without a signal, went on running, orphaned, in its workdir.
      # Forwarded as SIGTERM: a training member saves its step first (a member that got
      # Slurm's SIGTERM too takes the second as the same request), however long that takes:
      # the scheduler's own kill, or a Ctrl-C to the sweep, bounds the wait
      terminated = isinstance(e, signals.Terminated)
      if terminated and proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
      try:  # a repeated SIGTERM (Slurm's again at the time limit) is the same request: the
        # member finishes its save, however long; a Ctrl-C now (or Ctrl-C's grace) kills it
        with signals.deferred_termination() if terminated else contextlib.nullcontext():
          proc.wait(timeout=None if terminated else INTERRUPT_GRACE_S)
      except (subprocess.TimeoutExpired, KeyboardInterrupt):
        proc.kill()
        proc.wait()
      raise
  if rc in (signals.TERMINATED, -signal.SIGTERM):  # the member alone was stopped (a scheduler's
    raise signals.Terminated  # stop, a kill): stop the sweep too, not the next member
  if rc in (INTERRUPTED, -signal.SIGINT):  # (Ctrl-C)
    raise KeyboardInterrupt
  if rc:
    with open(log, encoding="utf-8", errors="replace") as f:
      tail = "".join(f.readlines()[-20:])
    print(f"  {member.name} failed (exit {rc}); last lines of {log}:\n{tail}", flush=True)
  return rc == 0


def run_inprocess(member: Member, config, mdir: str, command: Sequence[str]) -> bool:
  """Runs the member in this process as `sadm_jax.main` would: validated, then its stage."""
  main_lib = sys.modules.get("__main__")
  if getattr(getattr(main_lib, "__spec__", None), "name", None) != "sadm_jax.main":
    from sadm_jax import main as main_lib  # (under `python -m sadm_jax.main` it is __main__)
  try:
    # a user error: one `error:` line, rc 2; Ctrl-C propagates, for the caller's one line
    rc = main_lib.run_checked(config, mdir, report_interrupt=False)
  except Exception:  # pylint: disable=broad-except  (one member's failure is not the sweep's)
    print(f"  {member.name} failed:\n{traceback.format_exc()}", flush=True)
    return False
  if rc == INTERRUPTED:  # Ctrl-C (run_checked printed its line): stop, do not start the next one
    raise KeyboardInterrupt
  if rc:
    print(f"  {member.name} failed (exit {rc})", flush=True)
  return rc == 0


def config_json(config: ml_collections.ConfigDict) -> dict:
  """The member's config as given (faithful placeholders unresolved, as checkpoints store it)."""
  return json.loads(json.dumps(config.to_dict(), default=list))


def is_done(workdir: str, name: str) -> bool:
  return os.path.exists(os.path.join(workdir, name, DONE))


def done_seconds(workdir: str, name: str) -> float | None:
  """The seconds a finished member's DONE records; None for a marker without them (one made by
  hand, `touch W/m/DONE`, marks a member finished as well)."""
  try:
    with open(os.path.join(workdir, name, DONE), encoding="utf-8") as f:
      return float(json.load(f)["seconds"])
  except (OSError, ValueError, KeyError, TypeError):
    return None


def run_local(members: Sequence[Member], workdir: str, extra: Sequence[str] = (),
              runner: Runner = run_subprocess, primary: bool | None = None) -> list[str]:
  """Runs the unfinished members in dependency order; returns the names of the failed ones
  (including those not started because a dependency failed). Config errors raise up front."""
  done = {d for m in members for d in m.after if is_done(workdir, d)}
  members = ordered(members, done)
  configs = {m.name: member_config(m, workdir, extra) for m in members}
  for m in members:
    if not is_done(workdir, m.name):
      check_member_config(m, configs[m.name])
      check_member_workdir(m, workdir)
      check_member_resume(m, configs[m.name], workdir)
  primary = is_primary() if primary is None else primary
  failed: list[str] = []
  for i, m in enumerate(members, 1):
    mdir, tag = os.path.join(workdir, m.name), f"[{i}/{len(members)}] {m.name}"
    if is_done(workdir, m.name):
      _warn_if_changed(m, configs[m.name], workdir)
      print(f"{tag}: done already, skipped", flush=True)
      continue
    blocked = [d for d in m.after if d in failed]
    if blocked:
      print(f"{tag}: not started, {', '.join(blocked)} failed", flush=True)
      failed.append(m.name)
      continue
    os.makedirs(mdir, exist_ok=True)
    if primary:
      io.write_json(os.path.join(mdir, "config.json"), config_json(configs[m.name]))
    print(f"{tag}: running", flush=True)
    t0 = time.time()
    ok = runner(m, configs[m.name], mdir, main_command(m, workdir, extra))
    seconds = time.time() - t0
    if ok and primary:
      io.write_json(os.path.join(mdir, DONE), {"member": m.name, "seconds": round(seconds, 2),
                                               "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    print(f"{tag}: {'done' if ok else 'FAILED'} in {seconds:.1f} s", flush=True)
    if not ok:
      failed.append(m.name)
  return failed


def saved_config_json(mdir: str) -> dict | None:
  """The config.json a finished member wrote in `mdir` (`config_json`), None when unreadable."""
  try:
    with open(os.path.join(mdir, "config.json"), encoding="utf-8") as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def _differing_leaves(a: Any, b: Any, out: list) -> None:
  """Appends (a leaf, b leaf) for every place where two JSON values differ (of two dicts, the
  keys both have: a field one of them lacks holds no path to compare)."""
  if isinstance(a, dict) and isinstance(b, dict):
    for k in a.keys() & b.keys():
      _differing_leaves(a[k], b[k], out)
  elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
    for x, y in zip(a, b):
      _differing_leaves(x, y, out)
  elif a != b:
    out.append((a, b))


def as_if_here(saved: Any, now: Any, workdir: str) -> Any:
  """`saved` (a finished member's config.json) with the paths under the sweep workdir's earlier
  location rewritten to `workdir`, when the sweep was moved there; else `saved` unchanged.

  The earlier location is the one root R such that each path under `workdir` in `now` that
  differs from `saved` reads R + the same rest there; other differences stay differences.
  """
  pairs: list = []
  _differing_leaves(now, saved, pairs)
  roots = set()
  for n, s in pairs:
    if isinstance(n, str) and isinstance(s, str) and (n == workdir
                                                      or n.startswith(workdir + os.sep)):
      rest = n[len(workdir):]
      if s.endswith(rest) and len(s) > len(rest):
        roots.add(s[:len(s) - len(rest)])
  if len(roots) != 1:
    return saved
  old = roots.pop()

  def move(v: Any) -> Any:
    if isinstance(v, dict):
      return {k: move(x) for k, x in v.items()}
    if isinstance(v, list):
      return [move(x) for x in v]
    if isinstance(v, str) and (v == old or v.startswith(old + os.sep)):
      return workdir + v[len(old):]
    return v
  return move(saved)


def changed_keys(saved: dict, now: dict, workdir: str, ignored=lambda key: False) -> list[str]:
  """Flat keys ('section.key') whose value in a finished member's saved config differs from the
  member's config now, the workdir's own paths compared as if it had always been here
  (`as_if_here`). Keys the saved config lacks (a field added to the base config since it ran)
  are not compared, as on a resumed training run (`train.workdir.config_differences`)."""
  from sadm_jax.train import workdir as workdir_lib
  saved = workdir_lib.flatten(as_if_here(saved, now, workdir))
  now = workdir_lib.flatten(now)
  return sorted(k for k in saved if not ignored(k) and now.get(k, ...) != saved[k])


def _warn_if_changed(member: Member, config: ml_collections.ConfigDict, workdir: str) -> None:
  saved = saved_config_json(os.path.join(workdir, member.name))
  if saved is None:
    return
  if changed_keys(saved, config_json(config), workdir):
    print(f"warning: {member.name} finished with a different config than the sweep now gives; "
          f"delete {os.path.join(workdir, member.name, DONE)} to run it again", flush=True)
