"""benchmarks/random_draw_compile.py: one row per shape, level and form; bad arguments refused."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from benchmarks import random_draw_compile
from tests.helpers import REPO


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


SHAPES_ERROR = "error: --shapes takes e.g. 3x3x8x12,864 and --levels e.g. 3,2"


@pytest.mark.parametrize("args,line", [
    (["--shapes", "3x3xa"], SHAPES_ERROR), (["--levels", "two"], SHAPES_ERROR),
    (["--out", "/no/such/dir/draws.json"], "error: --out=/no/such/dir/draws.json: no such "
                                           "directory /no/such/dir")])
def test_bad_arguments_are_one_error_line_and_exit_code_2(args, line):
  """Refused before anything is measured: one line, exit code 2, no traceback."""
  proc = subprocess.run([sys.executable, "-m", "benchmarks.random_draw_compile", *args], cwd=REPO,
                        capture_output=True, text=True, timeout=60, check=False)
  assert proc.returncode == 2 and proc.stdout == ""
  assert proc.stderr.strip().splitlines() == [line], proc.stderr
