"""benchmarks/random_draw_compile.py: one row per shape, level and form; bad arguments refused."""

from __future__ import annotations

import json

import pytest

from benchmarks import random_draw_compile


def test_rows_for_a_small_shape_and_the_same_values_flat(tmp_path, capsys):
  out = tmp_path / "draws.json"
  random_draw_compile.main(["--shapes", "2x3", "--levels", "2", "--out", str(out)])
  table = capsys.readouterr().out
  assert "2x3" in table and "True" in table  # flat and shaped draws give the same values
  record = json.loads(out.read_text())
  assert [(r["shape"], r["level"], r["form"]) for r in record["rows"]] == [
      ("2x3", 2, "shaped"), ("2x3", 2, "flat")]
  assert all(r["compile_s"] > 0 for r in record["rows"]) and record["machine"]["cpu"]
  assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize("args", [["--shapes", "3x3xa"], ["--levels", "two"]])
def test_bad_arguments_are_one_error_line(args):
  with pytest.raises(SystemExit, match="error: --shapes takes"):
    random_draw_compile.main(args)
