"""Sweeps: run a list of members (config, `--config.k=v` overrides, dependencies) resumably, locally or on Slurm.

    python -m sadm_jax.sweep --sweep=configs/sweeps/<name>.py --workdir=W [--mode=local|slurm]
        [--members=a,b] [--runner=subprocess|inprocess] [-- --config.k=v ...]
    python -m sadm_jax.sweep --sweep=configs/sweeps/<name>.py --workdir=W --report [--members=a,b]

A sweep file's `get_sweep()` returns a list of `sadm_jax.sweeps.Member`: a name, a config spec
('configs/x.py' or 'configs/x.py:arg', relative to the repository root), `--config.k=v` override
strings ('{workdir}' stands for the sweep's workdir) and the names of the members it depends on
(`after`). Member m is `python -m sadm_jax.main --config=<spec> --workdir=W/m <overrides>
<extra>`, <extra> being what follows `--` here (overrides, and main's absl logging flags such as
-v 1; absl.app's debugger, profiling and help flags are refused); ml_collections' config flags
parse the overrides in both runners. Members run in dependency order; W/m/config.json is the
config they build, W/m/log.txt the output (subprocess runner), and W/m/DONE, written
atomically after success, makes a re-run skip the member; a member whose dependency failed is not
started. --mode=slurm renders one script per member from launch/slurm.sbatch plus
W/slurm/submit.sh (afterok dependencies) and submits nothing. --report gathers the reporting
members' (of --members) report/metrics.json rows into W/sweep_report.{csv,md}, tabulated by the
evaluation package. Exit code: 0 when every member ran (or was skipped as done), 1 when a member
failed, 2 for a mistake in the command line or the sweep file, 130 after Ctrl-C, 143 after SIGTERM.
"""

from __future__ import annotations

import os
import re
import shlex
import sys
from typing import Sequence

from sadm_jax import config as config_lib
from sadm_jax.sweeps import members as members_lib
from sadm_jax.sweeps import report, runner, slurm
from sadm_jax.sweeps.members import Member, flag, grid  # noqa: F401  (the public API)
from sadm_jax.sweeps.runner import DONE  # noqa: F401
from sadm_jax.utils import signals


def main(f, extra: Sequence[str]) -> int:
  """Runs the command line parsed into `f` (absl FlagValues); returns the exit code."""
  from sadm_jax import validate_paths
  if f.mode == "slurm" and f.runner == "inprocess":  # was: ignored without a word
    raise ValueError("--runner=inprocess is for --mode=local: each --mode=slurm job runs its "
                     "member as `python -m sadm_jax.main` (drop --runner, or use --mode=local)")
  if f.report:  # was: ignored without a word
    given = [f"--{n}={f[n].value}" for n in ("mode", "runner") if f[n].present]
    given += ["what follows --"] if extra else []
    if given:
      raise ValueError(f"--report runs no member (it reads W/<member>/report/metrics.json): "
                       f"drop {' and '.join(given)}")
  sweep = members_lib.load_sweep(f.sweep)
  if f.report and not os.path.isdir(f.workdir):  # a typo: not a new folder with an empty report
    validate_paths.check_dir_path(f.workdir, "--workdir")  # (a file, a URL: its own line)
    raise ValueError(f"--workdir={f.workdir}: no such directory (--report reads the members' "
                     "reports of a sweep run there)")
  validate_paths.check_workdir(f.workdir)  # a file or an unwritable place: one line, exit 2
  workdir = os.path.abspath(f.workdir)
  if f.report:
    print(report.write_report(sweep, workdir, sweep.select(f.members) if any(f.members) else None),
          end="")
    return 0
  members = sweep.select(f.members)
  in_memory = [m.name for m in members if not isinstance(m.config, str)]
  if in_memory and (f.mode == "slurm" or f.runner == "subprocess"):  # was: refused when reached
    how = "--mode=slurm's jobs run" if f.mode == "slurm" else "--runner=subprocess runs"
    raise ValueError(f"member(s) {', '.join(in_memory)} have an in-memory config (a ConfigDict), "
                     f"but {how} `python -m sadm_jax.main --config=<file>`: give them a "
                     "'configs/x.py[:arg]' spec, or run locally with --runner=inprocess")
  if f.mode == "slurm":
    paths = slurm.write_slurm(sweep, workdir, members, extra)
    print(f"wrote {len(paths) - 1} job script(s) under {os.path.dirname(paths[-1])}; submit "
          f"with bash {shlex.quote(paths[-1])} [sbatch options]")  # (a command to copy)
    return 0
  run = runner.run_inprocess if f.runner == "inprocess" else runner.run_subprocess
  if f.runner == "inprocess" and members:
    from absl import flags
    for name, value in members_lib.main_flags(members[0], workdir, extra).items():
      flags.FLAGS[name].value = value  # -v 1 after --: this process's logging, as in main's
      flags.FLAGS[name].present = 1
    from sadm_jax import distributed
    distributed.maybe_initialize(members_lib.member_config(members[0], workdir, extra))
    import jax
    primary = jax.process_index() == 0
  else:
    primary = None
  failed = runner.run_local(members, workdir, extra, run, primary)
  if failed:
    print(f"{len(failed)} member(s) failed: {', '.join(failed)}", file=sys.stderr)
    return 1
  return 0


def _flag_values():
  """The sweep's flags in their own FlagValues (sadm_jax.main defines --config/--workdir)."""
  from absl import flags
  fv = flags.FlagValues()
  flags.DEFINE_string("sweep", None, "Sweep file (configs/sweeps/<name>.py).", flag_values=fv)
  flags.DEFINE_string("workdir", None, "Sweep directory; member m runs in W/m.", flag_values=fv)
  flags.DEFINE_enum("mode", "local", ["local", "slurm"], "Run here, or write Slurm job scripts.",
                    flag_values=fv)
  flags.DEFINE_enum("runner", "subprocess", ["subprocess", "inprocess"],
                    "local mode: one `python -m sadm_jax.main` per member, or all in this process.",
                    flag_values=fv)
  flags.DEFINE_list("members", [], "Only these members (comma-separated names).", flag_values=fv)
  flags.DEFINE_bool("report", False, "Gather the members' evaluation reports and exit.",
                    flag_values=fv)
  flags.mark_flags_as_required(["sweep", "workdir"], flag_values=fv)
  return fv


_HELP = ("-h", "-?", "--help", "--helpshort", "--helpfull")


def cli(argv: Sequence[str] | None = None) -> int:
  from absl import flags, logging
  fv = _flag_values()
  argv = list(argv if argv is not None else sys.argv)
  cut = argv.index("--") if "--" in argv else len(argv)
  ours, extra = argv[:cut], argv[cut + 1:]
  if any(a.split("=")[0] in _HELP for a in ours[1:]):  # absl.app's help flags, which fv lacks
    print(f"{__doc__.strip()}\n\nflags:\n{fv.get_help()}")
    return 0
  try:
    rest = fv(ours)
  except flags.Error as e:
    main_flags = {n for f in flags.FLAGS.flags_by_module_dict().get(logging.__name__, [])
                  for n in (f.name, f.short_name, f"no{f.name}") if n}  # -v, --verbosity, ...
    hint = next((f" (member options such as {a.split('=')[0]} go after --)" for a in ours[1:]
                 if a.startswith("--config") or (
                     a.startswith("-") and a.lstrip("-").split("=")[0] in main_flags)), "")
    print(f"error: {e}{hint}\nflags:\n{fv.get_help()}", file=sys.stderr)
    return 2
  if len(rest) > 1:
    print(f"error: unexpected arguments: {' '.join(rest[1:])} (member overrides go after --)",
          file=sys.stderr)
    return 2
  for name in ("sweep", "workdir", "mode", "runner", "members"):  # absl keeps the last one
    values = config_lib.flag_values(ours, name)
    if len(values) > 1:
      print(f"error: --{name} is given {len(values)} times ({', '.join(values)}); give one",
            file=sys.stderr)
      return 2
  if fv["members"].present and not any(n.strip() for n in fv.members):  # was: every member
    print("error: --members= is empty: give member names (comma-separated), or leave --members "
          "out for every member", file=sys.stderr)
    return 2
  ours_after = next((a for a in extra if re.match(r"--(sweep|mode|runner|members|(no)?report)"
                                                  r"(=|$)", a)), None)
  if ours_after:  # was: "member <m>: Unknown command line flag 'report'"
    print(f"error: {ours_after} follows --, but it is the sweep's own option: put it before -- "
          "(what follows -- goes to every member's sadm_jax.main)", file=sys.stderr)
    return 2
  flags.FLAGS.mark_as_parsed()  # grain and absl logging read the global flags
  logging.set_verbosity(logging.WARNING)
  try:
    with signals.terminate_as_interrupt():
      return main(fv, extra)
  except (ValueError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  except KeyboardInterrupt as e:  # Ctrl-C, SIGTERM: members write whole files, finished ones
    # keep their DONE
    print(f"error: sweep interrupted ({signals.signal_name(e)}); finished members keep "
          f"{runner.DONE}: run the same command again to resume", file=sys.stderr, flush=True)
    return signals.TERMINATED if isinstance(e, signals.Terminated) else runner.INTERRUPTED


if __name__ == "__main__":
  _code = cli()
  if _code:  # a member's computation may still run on XLA's threads: no teardown under it
    from sadm_jax.main import exit_now
    exit_now(_code)
  sys.exit(_code)
