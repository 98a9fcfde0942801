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
