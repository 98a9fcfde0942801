"""benchmarks/import_time.py: fresh-process import timing, its variants and its usage errors."""

import ml_dtypes
import pytest

from benchmarks import import_time


def test_one_fresh_process_reports_times_and_the_loaded_version(tmp_path):
  # An empty directory first on PYTHONPATH changes nothing: the installed ml_dtypes is loaded.
  res = import_time.measure({"installed": "", "empty": str(tmp_path)}, 1,
                            statements=("import ml_dtypes",))
  for variant in ("installed", "empty"):
    r = res[variant]["import ml_dtypes"]
    assert r["ml_dtypes"] == ml_dtypes.__version__ and r["repeats"] == 1
    assert r["wall_s"] > 0 and r["cpu_s"] > 0
    assert 0 < r["ext_self_s"] <= r["wall_s"]  # parsed from -X importtime


def test_a_failing_statement_is_an_error_naming_it():
  with pytest.raises(RuntimeError, match="import no_such_module_here"):
    import_time.run_once("import no_such_module_here")


@pytest.mark.parametrize("argv, message", [
    (["--variant", "noequals"], "expected NAME=DIR"),
    (["--variant", "x=/no/such/dir"], "expected NAME=DIR"),
    (["--variant", "installed=."], "expected NAME=DIR"),
    (["--repeats", "0"], "must be >= 1")])
def test_usage_errors_are_one_line_and_exit_2(argv, message, capsys, tmp_path):
  assert import_time.main(argv + ["--out", str(tmp_path / "r.json")]) == 2
  err = capsys.readouterr().err.strip()
  assert message in err and len(err.splitlines()) == 1 and err.startswith("import_time: ")
  assert not (tmp_path / "r.json").exists()


def test_a_usage_error_as_a_command_is_one_line_exit_2_no_traceback(tmp_path):
  """`python -m benchmarks.import_time` as run, refusing a bad --variant before measuring."""
  import subprocess
  import sys

  from tests.helpers import REPO
  out = tmp_path / "r.json"
  res = subprocess.run([sys.executable, "-m", "benchmarks.import_time", "--variant",
                        f"x={tmp_path / 'missing'}", "--out", str(out)],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
  assert res.returncode == 2 and not res.stdout.strip()
  err = res.stderr.strip()
  assert err.startswith("import_time: --variant ") and "expected NAME=DIR" in err, err
  assert len(err.splitlines()) == 1 and "Traceback" not in res.stderr
  assert not out.exists()
