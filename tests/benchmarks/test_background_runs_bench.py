"""benchmarks/background_runs.py: the session's background runs in their order; bad names refused."""

from benchmarks import background_runs
from tests import conftest


def test_unknown_run_is_refused_with_one_line(monkeypatch, capsys, tmp_path):
  monkeypatch.setenv("SADM_TEST_JAX_CACHE", str(tmp_path / "cache"))
  assert background_runs.main(["--runs", "tiny_sadm,nope", "--out", ""]) == 2
  err = capsys.readouterr().err.strip()
  assert err.startswith("error: --runs: unknown run(s) nope; expected some of tiny_cddpm, ")
  assert "\n" not in err


def test_a_chosen_run_brings_the_runs_it_reads_in_session_order():
  assert background_runs._session() is conftest
  assert conftest.needed_runs(["tiny_evaluation"]) == ["tiny_cddpm", "tiny_sadm", "tiny_evaluation"]
  assert conftest.needed_runs(["demo_tiny_run"]) == ["demo_tiny_run"]
  # the reproduction runs on the demo run's cohort
  assert conftest.needed_runs(["tiny_reproduction_run"]) == ["demo_tiny_run", "tiny_reproduction_run"]
