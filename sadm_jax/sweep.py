"""Ablation sweeps: run named config variants (locally or as a Slurm job array) and aggregate their reports.

    python -m sadm_jax.sweep --sweep=configs/sweeps/<name>.py --workdir=W [--mode=local|slurm]
        [--members=a,b] [--set=data.data_dir=D ...] [--report]

A sweep file defines `get_sweep()` returning a dict:
  config:    base config, 'configs/x.py' or 'configs/x.py:arg' (relative to the repository root);
  overrides: {dotted.key: value} applied to every member (optional);
  members:   list of {'name', 'overrides', optional 'config' (replaces the base), 'phase' (int,
             default 0: phases run in order; later phases may read earlier members' workdirs),
             'report' (bool, default True: whether the member is a row of the sweep report)}.
`grid()` builds members from the product of value lists. A string value may contain '{workdir}'
(the sweep's workdir, absolute). `--set` overrides come last and win.

Each member runs `python -m sadm_jax.main --config=<config> --workdir=W/<member> --config.k=v ...`
(or in this process with --runner=inprocess); W/<member>/config.json is its resolved config,
W/<member>/DONE (written atomically after success) makes a re-run skip it, W/<member>/log.txt
holds its output. --mode=slurm writes W/sweep.sbatch (one member per array index) and, for
sweeps with several phases, W/submit.sh chaining them with afterok dependencies; it submits
nothing. --report aggregates W/<member>/report/metrics.csv into W/sweep_report.{csv,md}.
"""

from __future__ import annotations

import ast
import csv
import dataclasses
import importlib.util
import io as _io
import itertools
import json
import math
import os
import re
import shlex
import subprocess
import sys
import time
import traceback
from typing import Any, Iterable, Mapping, Sequence

import ml_collections

from sadm_jax.utils import io

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=,+-]*$")
DONE = "DONE"
# Columns of the markdown report per data set: (title, metrics.csv column).
REPORT_METRICS = (("⌈Dice⌉", "best_dice"), ("AUPRC", "auprc"))
KEY_COLUMNS = ("method", "train_anomalies", "test_set")


@dataclasses.dataclass(frozen=True)
class Member:
  name: str
  config: str  # 'path.py' or 'path.py:arg'
  overrides: tuple[tuple[str, Any], ...]  # sweep-wide first, then the member's own
  phase: int = 0
  report: bool = True


@dataclasses.dataclass(frozen=True)
class Sweep:
  name: str
  path: str
  members: tuple[Member, ...]  # sorted by phase (stable)

  def select(self, names: Iterable[str]) -> list[Member]:
    names = [n for n in names if n]
    if not names:
      return list(self.members)
    known = {m.name: m for m in self.members}
    unknown = [n for n in names if n not in known]
    if unknown:
      raise ValueError(f"unknown member(s) {', '.join(unknown)}; the sweep has "
                       f"{', '.join(known)}")
    return [m for m in self.members if m.name in names]


def grid(axes: Mapping[str, Sequence[Any]], name: str = "{}", **fields) -> list[dict]:
  """Members for every combination of `axes` ({dotted.key: [values]}); named by `name` formatted
  with 'key=value' parts joined by ',' (key = the last part of the dotted key)."""
  keys = list(axes)
  out = []
  for values in itertools.product(*(axes[k] for k in keys)):
    label = ",".join(f"{k.rsplit('.', 1)[-1]}={_label(v)}" for k, v in zip(keys, values))
    out.append({**fields, "name": name.format(label),
                "overrides": {**fields.get("overrides", {}), **dict(zip(keys, values))}})
  return out


def _label(v: Any) -> str:
  if isinstance(v, (tuple, list)):
    return "+".join(_label(x) for x in v)
  return str(v)


# ----------------------------------------------------------------------------- loading


def _load_module(path: str, name: str):
  if REPO not in sys.path:
    sys.path.insert(0, REPO)  # sweep and config files import `configs.*`
  full = path if os.path.isabs(path) else os.path.join(REPO, path)
  if not os.path.isfile(full):
    raise FileNotFoundError(f"{path}: no such file")
  spec = importlib.util.spec_from_file_location(name, full)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def load_sweep(path: str) -> Sweep:
  """Reads and validates a sweep file."""
  spec = _load_module(path, "_sadm_sweep_" + re.sub(r"\W", "_", os.path.basename(path)))
  s = spec.get_sweep()
  common = dict(s.get("overrides", {}))
  members = []
  for i, m in enumerate(s["members"]):
    name = m.get("name", "")
    if not NAME_RE.match(name):
      raise ValueError(f"{path}: member {i} has an invalid name {name!r} (letters, digits, ._=,+-)")
    unknown = set(m) - {"name", "config", "overrides", "phase", "report"}
    if unknown:
      raise ValueError(f"{path}: member {name}: unknown field(s) {sorted(unknown)}")
    config = m.get("config", s.get("config", ""))
    if not config:
      raise ValueError(f"{path}: member {name} has no config (and the sweep no base config)")
    members.append(Member(name, config, tuple({**common, **m.get("overrides", {})}.items()),
                          int(m.get("phase", 0)), bool(m.get("report", True))))
  names = [m.name for m in members]
  dups = sorted({n for n in names if names.count(n) > 1})
  if dups:
    raise ValueError(f"{path}: duplicate member names {dups}")
  members.sort(key=lambda m: m.phase)
  return Sweep(os.path.splitext(os.path.basename(path))[0], path, tuple(members))


def load_config(spec: str) -> ml_collections.ConfigDict:
  """The ConfigDict of 'path.py' or 'path.py:arg' (as `--config=` would load it)."""
  path, _, arg = spec.partition(":")
  module = _load_module(path, "_sadm_config_" + re.sub(r"\W", "_", path))
  return module.get_config(arg) if arg else module.get_config()


def substitute(value: Any, workdir: str) -> Any:
  """Replaces '{workdir}' in strings (also inside tuples/lists) by the sweep's workdir."""
  if isinstance(value, str):
    return value.replace("{workdir}", workdir)
  if isinstance(value, (tuple, list)):
    return type(value)(substitute(v, workdir) for v in value)
  return value


def parse_set(items: Sequence[str]) -> list[tuple[str, str]]:
  """['a.b=v', ...] -> [('a.b', 'v'), ...] (values stay strings until the field's type is known)."""
  out = []
  for item in items:
    key, sep, value = item.partition("=")
    if not sep or not key:
      raise ValueError(f"--set {item!r}: expected dotted.key=value")
    out.append((key, value))
  return out


def _from_string(raw: str, current: Any) -> Any:
  if isinstance(current, str):
    return raw
  if isinstance(current, bool):
    if raw.lower() in ("true", "1", "yes"):
      return True
    if raw.lower() in ("false", "0", "no"):
      return False
    raise ValueError(f"{raw!r} is not a boolean")
  try:
    return ast.literal_eval(raw)
  except (ValueError, SyntaxError):
    return raw


def _set(config: ml_collections.ConfigDict, key: str, value: Any, from_string: bool) -> None:
  node, parts = config, key.split(".")
  for part in parts[:-1]:
    if part not in node or not isinstance(node[part], ml_collections.ConfigDict):
      raise KeyError(f"no config section {key.rsplit('.', 1)[0]!r} (for {key})")
    node = node[part]
  if parts[-1] not in node:
    raise KeyError(f"no config field {key!r}")
  current = node[parts[-1]]
  if from_string:
    value = _from_string(value, current)
  if isinstance(current, tuple) and isinstance(value, list):
    value = tuple(value)
  node[parts[-1]] = value


def resolve_member(member: Member, workdir: str, sets: Sequence[tuple[str, str]] = ()):
  """The member's config with every override applied (before faithful-flag resolution)."""
  config = load_config(member.config)
  for key, value in member.overrides:
    _set(config, key, substitute(value, workdir), from_string=False)
  for key, value in sets:
    _set(config, key, substitute(value, workdir), from_string=True)
  return config


def _flag_value(v: Any) -> str:
  if isinstance(v, (tuple, list)):
    return repr(tuple(v))
  if isinstance(v, float):
    return repr(v)
  return str(v)


def main_command(member: Member, workdir: str, sets: Sequence[tuple[str, str]] = ()) -> list[str]:
  """`python -m sadm_jax.main ...` for the member (paths absolute, so any cwd works)."""
  path, sep, arg = member.config.partition(":")
  config = (path if os.path.isabs(path) else os.path.join(REPO, path)) + sep + arg
  cmd = [sys.executable, "-m", "sadm_jax.main", f"--config={config}",
         f"--workdir={os.path.join(workdir, member.name)}"]
  cmd += [f"--config.{k}={_flag_value(substitute(v, workdir))}" for k, v in member.overrides]
  cmd += [f"--config.{k}={substitute(v, workdir)}" for k, v in sets]
  return cmd


# ----------------------------------------------------------------------------- local runs


def is_primary(environ: Mapping[str, str] | None = None) -> bool:
  """Process 0 of a launcher (SLURM_PROCID / JAX_PROCESS_ID), without initialising JAX."""
  environ = os.environ if environ is None else environ
  for var in ("JAX_PROCESS_ID", "SLURM_PROCID"):
    if environ.get(var, "").strip():
      return int(environ[var]) == 0
  return True


def _config_json(config: ml_collections.ConfigDict) -> dict:
  from sadm_jax import config as config_lib
  return json.loads(json.dumps(config_lib.resolve(config).to_dict(), default=list))


def _tail(path: str, n: int = 20) -> str:
  try:
    with open(path, encoding="utf-8", errors="replace") as f:
      return "".join(f.readlines()[-n:])
  except OSError:
    return ""


def _run_subprocess(member: Member, workdir: str, sets: Sequence[tuple[str, str]]) -> bool:
  cmd = main_command(member, workdir, sets)
  log = os.path.join(workdir, member.name, "log.txt")
  with open(log, "a", encoding="utf-8") as f:
    f.write(f"$ {shlex.join(cmd)}\n")
    f.flush()
    rc = subprocess.run(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT, check=False).returncode
  if rc:
    print(f"  {member.name} failed (exit {rc}); last lines of {log}:\n{_tail(log)}", flush=True)
  return rc == 0


def _run_inprocess(member: Member, config: ml_collections.ConfigDict, mdir: str) -> bool:
  from sadm_jax import main as main_lib
  config.lock()
  try:
    main_lib.run_stage(config, mdir)
  except Exception:  # pylint: disable=broad-except  (one member's failure is not the sweep's)
    print(f"  {member.name} failed:\n{traceback.format_exc()}", flush=True)
    return False
  return True


def run_member(member: Member, config: ml_collections.ConfigDict, workdir: str,
               sets: Sequence[tuple[str, str]], runner: str) -> tuple[bool, float]:
  """Runs one member; returns (succeeded, seconds). Writes config.json first and DONE last."""
  mdir = os.path.join(workdir, member.name)
  os.makedirs(mdir, exist_ok=True)
  if runner == "inprocess":
    import jax
    primary = jax.process_index() == 0
  else:
    primary = is_primary()
  if primary:
    io.write_json(os.path.join(mdir, "config.json"), _config_json(config))
  t0 = time.time()
  if runner == "subprocess":
    ok = _run_subprocess(member, workdir, sets)
  elif runner == "inprocess":
    ok = _run_inprocess(member, config, mdir)
  else:
    raise ValueError(f"unknown runner {runner!r}; expected 'subprocess' or 'inprocess'")
  seconds = time.time() - t0
  if ok and primary:
    io.write_json(os.path.join(mdir, DONE), {"member": member.name, "seconds": round(seconds, 2),
                                             "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
  return ok, seconds


def run_local(sweep: Sweep, workdir: str, members: Sequence[Member],
              sets: Sequence[tuple[str, str]] = (), runner: str = "subprocess") -> list[str]:
  """Runs unfinished members in phase order; returns the names of failed members."""
  configs = {m.name: resolve_member(m, workdir, sets) for m in members}  # all errors up front
  if runner == "inprocess" and members:
    from sadm_jax import distributed
    distributed.maybe_initialize(configs[members[0].name])
  failed = []
  for i, m in enumerate(members, 1):
    mdir = os.path.join(workdir, m.name)
    tag = f"[{i}/{len(members)}] {m.name}"
    if os.path.exists(os.path.join(mdir, DONE)):
      _warn_if_changed(m, configs[m.name], mdir)
      print(f"{tag}: done already, skipped", flush=True)
      continue
    print(f"{tag}: running (log: {os.path.join(mdir, 'log.txt')})" if runner == "subprocess"
          else f"{tag}: running", flush=True)
    ok, seconds = run_member(m, configs[m.name], workdir, sets, runner)
    print(f"{tag}: {'done' if ok else 'FAILED'} in {seconds:.1f} s", flush=True)
    if not ok:
      failed.append(m.name)
  return failed


def _warn_if_changed(member: Member, config: ml_collections.ConfigDict, mdir: str) -> None:
  try:
    with open(os.path.join(mdir, "config.json"), encoding="utf-8") as f:
      saved = json.load(f)
  except (OSError, ValueError):
    return
  if saved != _config_json(config):
    print(f"warning: {member.name} finished with a different config than the sweep now gives; "
          f"delete {os.path.join(mdir, DONE)} to run it again", flush=True)


# ----------------------------------------------------------------------------- slurm


def write_slurm(sweep: Sweep, workdir: str, members: Sequence[Member],
                sets: Sequence[tuple[str, str]] = ()) -> list[str]:
  """Writes W/sweep.sbatch (array index i = members[i]) and, with several phases, W/submit.sh."""
  for m in members:
    resolve_member(m, workdir, sets)  # fail now, not in the queue
  sweep_path = os.path.abspath(sweep.path if os.path.isabs(sweep.path)
                               else os.path.join(REPO, sweep.path))
  run = [sys.executable, "-m", "sadm_jax.sweep", f"--sweep={sweep_path}", f"--workdir={workdir}"]
  run += [f"--set={k}={v}" for k, v in sets]
  names = " ".join(shlex.quote(m.name) for m in members)
  lines = ["#!/usr/bin/env bash", f"#SBATCH --job-name=sweep-{sweep.name}",
           f"#SBATCH --array=0-{len(members) - 1}",
           f"#SBATCH --output={os.path.join(workdir, 'slurm-%A_%a.out')}",
           f"# Generated by `python -m sadm_jax.sweep --mode=slurm` from {sweep_path}.",
           "# One member per array index; resources are chosen at submission, e.g.",
           f"#   sbatch --gpus-per-node=1 --time=24:00:00 {os.path.join(workdir, 'sweep.sbatch')}",
           "# A member that already has W/<member>/DONE is skipped. index  phase  member:"]
  lines += [f"#   {i:<5}  {m.phase:<5}  {m.name}" for i, m in enumerate(members)]
  lines += ["set -euo pipefail",
            ': "${SLURM_ARRAY_TASK_ID:?submit with sbatch: this script is a job array}"',
            f"members=({names})",
            'member="${members[$SLURM_ARRAY_TASK_ID]}"',
            f"cd {shlex.quote(REPO)}",
            f'exec srun {shlex.join(run)} --members="$member"', ""]
  paths = [os.path.join(workdir, "sweep.sbatch")]
  io.write_text(paths[0], "\n".join(lines))
  os.chmod(paths[0], 0o755)
  phases = sorted({m.phase for m in members})
  if len(phases) > 1:
    paths.append(_write_submit(workdir, members, phases, paths[0]))
  return paths


def _write_submit(workdir: str, members: Sequence[Member], phases: list[int], sbatch: str) -> str:
  lines = ["#!/usr/bin/env bash", "# Submits the sweep phase by phase; each phase waits for the "
           "previous one to succeed (afterok). Extra arguments go to every sbatch call.",
           "set -euo pipefail", "dep=()"]
  for p in phases:
    idx = [i for i, m in enumerate(members) if m.phase == p]
    lines += [f"job=$(sbatch --parsable --array={idx[0]}-{idx[-1]} \"${{dep[@]}}\" \"$@\" "
              f"{shlex.quote(sbatch)})", f'echo "phase {p}: job $job"',
              'dep=(--dependency=afterok:"${job%%;*}")']
  path = os.path.join(workdir, "submit.sh")
  io.write_text(path, "\n".join(lines) + "\n")
  os.chmod(path, 0o755)
  return path


# ----------------------------------------------------------------------------- report


def _number(s: str) -> float:
  try:
    return float(s)
  except (TypeError, ValueError):
    return math.nan


def read_metrics(path: str) -> list[dict]:
  with open(path, newline="", encoding="utf-8") as f:
    return list(csv.DictReader(f))


def aggregate(rows: Sequence[dict]) -> list[dict]:
  """Per (method, train_anomalies, test_set): n_folds and mean/std over folds of every numeric
  column (population std, ddof=0, as the evaluation's own report.md)."""
  groups: dict[tuple, list[dict]] = {}
  for r in rows:
    groups.setdefault(tuple(r.get(k, "") for k in KEY_COLUMNS), []).append(r)
  skip = set(KEY_COLUMNS) | {"fold"}
  out = []
  for key, rs in groups.items():
    entry = dict(zip(KEY_COLUMNS, key))
    entry["n_folds"] = len({r.get("fold", "") for r in rs})
    for col in [c for c in rs[0] if c not in skip]:
      vals = [v for v in (_number(r.get(col)) for r in rs) if math.isfinite(v)]
      if vals:
        mean = sum(vals) / len(vals)
        entry[f"{col}_mean"] = mean
        entry[f"{col}_std"] = math.sqrt(sum((v - mean) ** 2 for v in vals) / len(vals))
    out.append(entry)
  return out


def _cell(entry: dict | None, col: str) -> str:
  if entry is None or f"{col}_mean" not in entry:
    return "–"
  mean, std = 100 * entry[f"{col}_mean"], 100 * entry[f"{col}_std"]
  return f"{mean:.2f} ± {std:.2f}" if entry["n_folds"] > 1 else f"{mean:.2f}"


def build_report(sweep: Sweep, workdir: str) -> tuple[list[dict], str]:
  """(csv rows, markdown) of every reporting member's report/metrics.csv."""
  table: list[dict] = []
  missing = []
  for m in [m for m in sweep.members if m.report]:
    path = os.path.join(workdir, m.name, "report", "metrics.csv")
    if not os.path.exists(path):
      missing.append(m.name)
      table.append({"member": m.name, "status": "missing"})
      continue
    for entry in aggregate(read_metrics(path)):
      table.append({"member": m.name, "status": "ok", **entry})
  sets = []
  for e in table:
    has = any(f"{col}_mean" in e for _, col in REPORT_METRICS)
    if e["status"] == "ok" and has and e["test_set"] not in sets:
      sets.append(e["test_set"])
  return table, _markdown(sweep, workdir, table, sets, missing)


def _markdown(sweep: Sweep, workdir: str, table: Sequence[dict], sets: Sequence[str],
              missing: Sequence[str]) -> str:
  head = ["member", "model", "trained on anomalies of", "folds"]
  head += [f"{s} {title}" for s in sets for title, _ in REPORT_METRICS]
  lines = [f"# Sweep {sweep.name}", "",
           f"From `{workdir}/<member>/report/metrics.csv`: "
           f"{', '.join(t for t, _ in REPORT_METRICS)} in %, mean ± std over folds (population "
           "std); a single fold shows its value alone.", "",
           "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  rows: dict[tuple[str, str, str], dict[str, dict]] = {}  # (member, method, anomalies) -> set -> entry
  for e in table:
    if e["status"] == "missing":
      rows[(e["member"], "", "")] = {}
    else:
      rows.setdefault((e["member"], e["method"], e["train_anomalies"]), {})[e["test_set"]] = e
  for (member, method, anomalies), by_set in rows.items():
    if member in missing:
      cells = [member, "missing (no report/metrics.csv)", "", ""] + [""] * (len(head) - 4)
    else:
      folds = sorted({by_set[s]["n_folds"] for s in sets if s in by_set})
      cells = [member, method, anomalies if anomalies not in ("", "none") else "—",
               "/".join(str(f) for f in folds)]
      cells += [_cell(by_set.get(s), col) for s in sets for _, col in REPORT_METRICS]
    lines.append("| " + " | ".join(cells) + " |")
  if missing:
    lines += ["", f"Missing ({len(missing)}): {', '.join(missing)}"]
  return "\n".join(lines) + "\n"


def report_csv(table: Sequence[dict]) -> str:
  cols = ["member", "status", *KEY_COLUMNS, "n_folds"]
  cols += sorted({k for e in table for k in e} - set(cols))
  buf = _io.StringIO()
  w = csv.writer(buf, lineterminator="\n")
  w.writerow(cols)
  for e in table:
    w.writerow(["" if e.get(c) is None else (repr(e[c]) if isinstance(e[c], float) else e[c])
                for c in cols])
  return buf.getvalue()


def write_report(sweep: Sweep, workdir: str) -> str:
  table, md = build_report(sweep, workdir)
  io.write_text(os.path.join(workdir, "sweep_report.csv"), report_csv(table))
  io.write_text(os.path.join(workdir, "sweep_report.md"), md)
  return md


# ----------------------------------------------------------------------------- command line


def main(f) -> int:
  """Runs the command line parsed into `f` (absl FlagValues); returns the exit code."""
  sweep = load_sweep(f.sweep)
  workdir = os.path.abspath(f.workdir)
  sets = parse_set(f.set)
  if f.report:
    print(write_report(sweep, workdir), end="")
    return 0
  members = sweep.select(f.members)
  if f.mode == "slurm":
    paths = write_slurm(sweep, workdir, members, sets)
    print(f"wrote {', '.join(paths)} ({len(members)} members); submit with "
          f"{'bash ' + paths[1] if len(paths) > 1 else 'sbatch ' + paths[0]}")
    return 0
  failed = run_local(sweep, workdir, members, sets, f.runner)
  if failed:
    print(f"{len(failed)} member(s) failed: {', '.join(failed)}", file=sys.stderr)
    return 1
  return 0


def _flag_values():
  """The sweep's flags, in their own FlagValues: sadm_jax.main (imported by --runner=inprocess)
  defines --config/--workdir on the global ones."""
  from absl import flags
  fv = flags.FlagValues()
  flags.DEFINE_string("sweep", None, "Sweep file (configs/sweeps/<name>.py).", flag_values=fv)
  flags.DEFINE_string("workdir", None, "Sweep directory; member i runs in W/<member>.",
                      flag_values=fv)
  flags.DEFINE_enum("mode", "local", ["local", "slurm"], "Run here, or write a Slurm job array.",
                    flag_values=fv)
  flags.DEFINE_enum("runner", "subprocess", ["subprocess", "inprocess"],
                    "local mode: one `python -m sadm_jax.main` per member, or all in this process.",
                    flag_values=fv)
  flags.DEFINE_list("members", [], "Only these members (comma-separated names).", flag_values=fv)
  flags.DEFINE_multi_string("set", [], "dotted.key=value for every member (applied last).",
                            flag_values=fv)
  flags.DEFINE_bool("report", False, "Aggregate the members' report/metrics.csv and exit.",
                    flag_values=fv)
  flags.mark_flags_as_required(["sweep", "workdir"], flag_values=fv)
  return fv


def cli(argv: Sequence[str] | None = None) -> int:
  from absl import flags, logging
  fv = _flag_values()
  try:
    rest = fv(list(argv if argv is not None else sys.argv))
  except flags.Error as e:
    print(f"error: {e}\nflags:\n{fv.get_help()}", file=sys.stderr)
    return 2
  if len(rest) > 1:
    print(f"error: unexpected arguments: {' '.join(rest[1:])}", file=sys.stderr)
    return 2
  flags.FLAGS.mark_as_parsed()  # grain and absl logging read the global flags
  logging.set_verbosity(logging.WARNING)
  return main(fv)


if __name__ == "__main__":
  sys.exit(cli())
