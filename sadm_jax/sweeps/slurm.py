"""Slurm scripts of a sweep: one per member rendered from launch/slurm.sbatch, and a submit script with afterok dependencies."""

from __future__ import annotations

import os
import re
import shlex
from typing import Sequence

from sadm_jax import validate_paths
from sadm_jax.sweeps import members as members_lib
from sadm_jax.sweeps import runner
from sadm_jax.utils import io

TEMPLATE = os.path.join(members_lib.REPO, "launch", "slurm.sbatch")


# What an #SBATCH line takes as it is: sbatch does not unquote its values reliably.
DIRECTIVE_SAFE = re.compile(r"^[\w./%=+,:@-]+$")


def log_pattern(path: str) -> str:
  """The job log's sbatch --output pattern for `path` + '-<job id>.out' ('%' in the path as '%%',
  which sbatch writes as '%'; '%j' the job id)."""
  return path.replace("%", "%%") + "-%j.out"


def _substitutions(job: str, output: str, args: Sequence[str]) -> list[tuple[str, str]]:
  """(line of the template, its replacement): the job name, the log, the repository, the command.
  A log path an #SBATCH line cannot hold as it is (a space) is left to submit.sh's sbatch
  command line, quoted there (`write_slurm`)."""
  return [
      ("#SBATCH --job-name=sadm_jax", f"#SBATCH --job-name={job}\n# Rendered from "
       "launch/slurm.sbatch by sadm_jax.sweeps.slurm: the arguments are set below (`set --`)."),
      ("#SBATCH --output=slurm-%x-%j.out", f"#SBATCH --output={output}"
       if DIRECTIVE_SAFE.match(output) else f"# --output={shlex.quote(output)} is given by "
       "submit.sh's sbatch command: an #SBATCH line cannot quote it"),
      ('REPO_DIR="${REPO_DIR:-${SLURM_SUBMIT_DIR:-$PWD}}"',
       # unquoted: an assignment is not word-split, and the quotes inside "${X:-'a b'}" are kept
       f'REPO_DIR=${{REPO_DIR:-{shlex.quote(members_lib.REPO)}}}'),
      ('if [[ "${1:-}" == "--" ]]; then shift; fi',
       f"set -- {shlex.join(args)}  # rendered by sadm_jax.sweeps.slurm"),
      ('exec "$SADM_PYTHON" -m sadm_jax.main "$@"\'',
       'exec "$SADM_PYTHON" -m sadm_jax.sweep "$@"\''),
  ]


def render(job: str, output: str, args: Sequence[str], template: str | None = None) -> str:
  """launch/slurm.sbatch with its job name, log path and repository set, running
  `python -m sadm_jax.sweep <args>` in every task instead of `sadm_jax.main`."""
  if template is None:
    with open(TEMPLATE, encoding="utf-8") as f:
      template = f.read()
  lines = template.split("\n")
  for old, new in _substitutions(job, output, args):
    hits = [i for i, line in enumerate(lines) if line.strip() == old]
    if len(hits) != 1:
      raise ValueError(f"{TEMPLATE}: expected the line {old!r} once, found it {len(hits)} times")
    indent = lines[hits[0]][:len(lines[hits[0]]) - len(lines[hits[0]].lstrip())]
    lines[hits[0]] = indent + new
  return "\n".join(lines)


def write_slurm(sweep: members_lib.Sweep, workdir: str, members: Sequence[members_lib.Member],
                extra: Sequence[str] = ()) -> list[str]:
  """Writes W/slurm/<member>.sbatch for every member and W/slurm/submit.sh, which submits them in
  dependency order (`afterok` on the members it submitted); returns the paths, submit.sh last.
  Each job runs `python -m sadm_jax.sweep --members=<member>`, so DONE markers work there too."""
  done = {d for m in members for d in m.after if runner.is_done(workdir, d)}
  members = members_lib.ordered(members, done)
  for m in members:  # fail now, not in the queue
    members_lib.check_member_config(m, members_lib.member_config(m, workdir, extra))
    members_lib.check_member_workdir(m, workdir)
  out = os.path.join(workdir, "slurm")
  validate_paths.check_dir_path(out, "the sweep's job-script folder")
  path = os.path.abspath(members_lib.repo_path(sweep.path))
  paths, submit = [], ["#!/usr/bin/env bash",
                       f"# Submits the members of sweep {sweep.name} ({path}) in dependency order;",
                       "# arguments go to every sbatch call (resources), e.g.",
                       f"#   bash {shlex.quote(os.path.join(out, 'submit.sh'))} --nodes=1 "
                       "--ntasks-per-node=1 --gpus-per-node=1 --time=24:00:00",
                       "set -euo pipefail", "declare -A job"]
  names = {m.name for m in members}
  for m in members:
    args = [f"--sweep={path}", f"--workdir={workdir}", f"--members={m.name}"]
    args += ["--", *extra] if extra else []
    script = os.path.join(out, f"{m.name}.sbatch")
    log = log_pattern(os.path.join(out, m.name))
    io.write_text(script, render(f"{re.sub(r'[^A-Za-z0-9._=+-]', '_', sweep.name)}.{m.name}", log,
                                 args))
    os.chmod(script, 0o755)
    paths.append(script)
    deps = [d for d in m.after if d in names]
    dep = (" --dependency=afterok:" + ":".join(f"${{job[{shlex.quote(d)}]}}" for d in deps)
           if deps else "")
    key = shlex.quote(m.name)
    if not DIRECTIVE_SAFE.match(log):  # (not in the script: `render`)
      dep += f" --output={shlex.quote(log)}"
    submit += [f"id=$(sbatch --parsable{dep} \"$@\" {shlex.quote(script)})",
               f'job[{key}]="${{id%%;*}}"', f'echo "{m.name}: job ${{job[{key}]}}"']
  submit_path = os.path.join(out, "submit.sh")
  io.write_text(submit_path, "\n".join(submit) + "\n")
  os.chmod(submit_path, 0o755)
  return paths + [submit_path]
