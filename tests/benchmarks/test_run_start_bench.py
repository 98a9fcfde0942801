"""benchmarks/run_start.py: its CLI timer reports the exit code, the child's CPU and its stderr."""

from benchmarks import run_start


def test_cli_timer_on_a_refused_value(tmp_path):
  rc, wall, cpu, err = run_start._cli(
      ["--config=configs/cddpm.py:tiny", f"--config.data.data_dir={tmp_path}",
       "--config.train.num_steps=-5", f"--workdir={tmp_path / 'w'}"], str(tmp_path / "cache"))
  assert rc == 2 and "error: --config.train.num_steps=-5 must be >= 0" in err
  assert wall > 0 and cpu > 0
  assert not (tmp_path / "w").exists()
