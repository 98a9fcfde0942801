"""The sweep CLI: what follows `--` (sadm_jax.main's options), and flags that go together."""

import pytest

from sadm_jax import sweep as sweep_cli
from sadm_jax.sweeps import members as members_lib
from sadm_jax.sweeps import runner
from sadm_jax.sweeps.members import Member, member_config
from tests.sweep_common import CDDPM, TINY


@pytest.mark.parametrize("extra", [["-v", "1"], ["--verbosity=1"], ["-v=1", "--logtostderr"]])
def test_absl_logging_flags_after_the_double_dash_reach_the_members(tmp_path, capsys, extra):
  """`python -m sadm_jax.main` takes absl's -v/--verbosity; after -- they were refused as an
  "Unknown command line flag 'v'" for every member."""
  m = Member("a", CDDPM, ["--config.seed=3"])
  assert member_config(m, "/w", extra).seed == 3
  assert members_lib.main_flags(m, "/w", extra)["verbosity"] == 1
  assert members_lib.main_command(m, "/w", extra)[-len(extra):] == extra
  assert sweep_cli.cli(["x", f"--sweep={TINY}", f"--workdir={tmp_path / 'w'}", "--mode=slurm",
                        "--", *extra]) == 0
  assert f"--members=lr_2e-3 -- {' '.join(extra)}  #" in (
      tmp_path / "w" / "slurm" / "lr_2e-3.sbatch").read_text()
  with pytest.raises(ValueError, match=r"^member a: flag --verbosity=x: invalid literal"):
    member_config(m, "/w", ["--verbosity=x"])


@pytest.mark.parametrize("flag,why", [
    ("--helpfull", "it prints the help instead of running the member"),
    ("-?", "it prints the help instead of running the member"),
    ("--only_check_args", "it ends each member before it runs, and the sweep would mark it DONE"),
    ("--pdb", "a debugger's prompt cannot be answered in a member's log file")])
def test_main_flags_a_sweep_cannot_pass_on_are_refused_naming_the_flag(tmp_path, capsys, flag,
                                                                        why):
  assert sweep_cli.cli(["x", f"--sweep={TINY}", f"--workdir={tmp_path / 'w'}", "--mode=slurm",
                        "--", flag]) == 2
  err = capsys.readouterr().err
  name = "--help" if flag == "-?" else flag
  assert err.startswith(f"error: {name} follows --, but a sweep cannot pass it to its members: "
                        f"{why}") and err.count("\n") == 1
  assert not (tmp_path / "w" / "slurm").exists()


def test_in_process_members_log_at_the_verbosity_given_after_the_double_dash(tmp_path,
                                                                             monkeypatch):
  from absl import flags, logging
  seen = []
  monkeypatch.setattr(runner, "run_local", lambda *a, **k: seen.append(
      (flags.FLAGS["verbosity"].present, logging.get_verbosity())) or [])
  old = flags.FLAGS["verbosity"].value
  try:
    assert sweep_cli.cli(["x", f"--sweep={TINY}", f"--workdir={tmp_path / 'w'}",
                          "--runner=inprocess", "--", "-v", "1"]) == 0
  finally:
    flags.FLAGS["verbosity"].value, flags.FLAGS["verbosity"].present = old, 0
  assert seen == [(1, 1)]


def test_an_in_process_runner_is_refused_for_slurm_jobs_not_ignored(tmp_path, capsys):
  assert sweep_cli.cli(["x", f"--sweep={TINY}", f"--workdir={tmp_path / 'w'}", "--mode=slurm",
                        "--runner=inprocess"]) == 2
  assert capsys.readouterr().err == (
      "error: --runner=inprocess is for --mode=local: each --mode=slurm job runs its member as "
      "`python -m sadm_jax.main` (drop --runner, or use --mode=local)\n")
  assert not (tmp_path / "w").exists()
  assert sweep_cli.cli(["x", f"--sweep={TINY}", f"--workdir={tmp_path / 'w'}", "--mode=slurm",
                        "--runner=subprocess"]) == 0  # (what the jobs do)


@pytest.mark.parametrize("flag", ["--report", "--members=lr_2e-3", "--mode=slurm",
                                  "--runner=inprocess"])
def test_a_sweep_option_after_the_double_dash_is_named_as_the_sweeps(tmp_path, capsys, flag):
  """Was: "error: member lr_2e-3: Unknown command line flag 'report'"."""
  assert sweep_cli.cli(["x", f"--sweep={TINY}", f"--workdir={tmp_path / 'w'}", "--",
                        "--config.seed=1", flag]) == 2
  assert capsys.readouterr().err == (
      f"error: {flag} follows --, but it is the sweep's own option: put it before -- (what "
      "follows -- goes to every member's sadm_jax.main)\n")
  assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("argv,name", [(["-v", "1"], "v"), (["--verbosity=1"], "verbosity"),
                                       (["--logtostderr"], "logtostderr")])
def test_a_member_logging_option_before_the_double_dash_says_where_it_goes(tmp_path, capsys,
                                                                           argv, name):
  assert sweep_cli.cli(["x", *argv, f"--sweep={TINY}", f"--workdir={tmp_path / 'w'}"]) == 2
  assert capsys.readouterr().err.startswith(
      f"error: Unknown command line flag '{name}' (member options such as {argv[0].split('=')[0]} "
      "go after --)\n")


@pytest.mark.parametrize("mode", ["local", "slurm"])
def test_an_empty_members_list_is_refused_not_every_member(tmp_path, capsys, mode):
  """`--members=$M` with M unset ran (or wrote the jobs of) every member of the sweep."""
  assert sweep_cli.cli(["x", f"--sweep={TINY}", f"--workdir={tmp_path / 'w'}", f"--mode={mode}",
                        "--members="]) == 2
  assert capsys.readouterr().err == ("error: --members= is empty: give member names "
                                     "(comma-separated), or leave --members out for every "
                                     "member\n")
  assert not (tmp_path / "w").exists()


def test_the_new_refusals_are_one_line_and_exit_2_from_the_command_line(tmp_path):
  """As a user runs them (`python -m sadm_jax.sweep`, `python -m sadm_jax.main`): a run option
  with --report, and None for a tuple setting that cannot be None — one `error:` line, exit 2,
  no traceback, nothing written."""
  import subprocess
  import sys
  from tests.cli_common import ENV, one_error, run_main
  from tests.helpers import REPO
  res = subprocess.run([sys.executable, "-m", "sadm_jax.sweep", f"--sweep={TINY}",
                        f"--workdir={tmp_path / 'w'}", "--report", "--mode=slurm"],
                       cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
  assert one_error(res) == ("error: --report runs no member (it reads "
                            "W/<member>/report/metrics.json): drop --mode=slurm")
  res = run_main(f"--workdir={tmp_path / 'm'}", "--config.diffusion.ensemble_timesteps=None")
  assert one_error(res).startswith("error: --config.diffusion.ensemble_timesteps=None: "
                                   "diffusion.ensemble_timesteps is a tuple")
  assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.parametrize("flag", ["--help", "-h", "-?", "--helpfull", "--helpshort"])
def test_help_before_the_double_dash_prints_the_usage_and_exits_0(tmp_path, capsys, flag):
  """Was: "error: Unknown command line flag 'help'" and exit 2 for `python -m sadm_jax.sweep
  --help`, the first thing a user types."""
  assert sweep_cli.cli(["x", flag, f"--workdir={tmp_path / 'w'}"]) == 0
  out, err = capsys.readouterr()
  assert err == "" and out.startswith(sweep_cli.__doc__.splitlines()[0])
  assert "--sweep: Sweep file" in out and "--report" in out
  assert not (tmp_path / "w").exists()
