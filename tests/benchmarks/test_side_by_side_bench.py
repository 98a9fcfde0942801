"""benchmarks/side_by_side.py: alternating order, per-round ratios; bad arguments; no PyTorch -> exit 2."""

import sys
import time

import pytest

from benchmarks import side_by_side as sbs


def test_rounds_alternate_and_ratios_are_per_round():
  calls = []

  def side(name, seconds):
    def fn():
      calls.append(name)
      time.sleep(seconds)
    return fn

  r = sbs.compare(side("ref", 0.02), side("ours", 0.01), rounds=4, warmup=1, pause=0.0)
  # one warm-up call each, then the reference first in even rounds and second in odd ones
  assert calls == ["ref", "ours", "ref", "ours", "ours", "ref", "ref", "ours", "ours", "ref"]
  assert len(r["ratios"]) == len(r["reference_s"]) == len(r["ours_s"]) == 4
  assert r["ratios"] == [a / b for a, b in zip(r["reference_s"], r["ours_s"])]
  assert 1.3 < r["ratio_median"] < 2.6  # 20 ms against 10 ms: the reference is slower
  assert r["ratio_min"] <= r["ratio_median"] <= r["ratio_max"]
  assert r["reference_median_s"] >= 0.02 and r["ours_median_s"] >= 0.01


def test_without_torch_exits_2_with_one_line(monkeypatch, capsys):
  monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` raises ImportError
  assert sbs.main(["--size", "tiny"]) == 2
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1 and "PyTorch is not installed" in err


@pytest.mark.parametrize("argv", [["--size", "huge"], ["--programs", "train,eval"],
                                  ["--programs", ","], ["--rounds", "0"], ["--warmup", "0"],
                                  ["--pause", "-1"], ["--threads", "0"]])
def test_bad_arguments_are_usage_errors(argv):
  with pytest.raises(SystemExit) as e:
    sbs.parse_args(argv)
  assert e.value.code == 2


def test_defaults_parse():
  args = sbs.parse_args([])
  assert args.program_list == ["train", "infer"] and args.size == "demo" and args.rounds == 7


def test_without_torch_the_command_line_exits_2_without_a_traceback():
  """The script as run (`python -m benchmarks.side_by_side`), in a Python without PyTorch."""
  import importlib.util
  import subprocess

  from tests.helpers import REPO
  if importlib.util.find_spec("torch") is not None:
    pytest.skip("PyTorch is installed here: the command would run the benchmark")
  res = subprocess.run([sys.executable, "-m", "benchmarks.side_by_side", "--size", "tiny"],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
  assert res.returncode == 2
  err = res.stderr.strip()
  assert len(err.splitlines()) == 1 and "PyTorch is not installed" in err, err
  assert "Traceback" not in res.stderr and not res.stdout.strip()


def test_run_fields_record_how_the_comparison_ran():
  import os
  import types

  import jax
  args = sbs.parse_args(["--rounds", "3", "--warmup", "2", "--pause", "0.25", "--threads", "1",
                         "--flush_denormal", "1"])
  f = sbs.run_fields(args, types.SimpleNamespace(__version__="9.9"))
  assert {k: f[k] for k in ("rounds", "warmup", "pause_s", "threads", "flush_denormal")} == {
      "rounds": 3, "warmup": 2, "pause_s": 0.25, "threads": 1, "flush_denormal": True}
  assert f["torch"] == "9.9" and f["jax"] == jax.__version__
  assert f["xla_flags"] == os.environ.get("XLA_FLAGS", "") and f["cpu_count"] == os.cpu_count()
  assert f["machine"] and f["python"]
