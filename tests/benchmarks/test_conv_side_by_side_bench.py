"""benchmarks/conv_side_by_side.py: forward convolutions grouped by shape, PyTorch's view of each,
count-weighted totals, our forward/backward callables; bad arguments; no PyTorch -> exit 2."""

import sys

import numpy as np
import pytest

from benchmarks import conv_side_by_side as csbs
from benchmarks import step_convs
from tests.benchmarks.test_step_convs_bench import HLO


def _convs():
  return {c["name"]: c for c in step_convs.parse_convolutions(HLO)}


def test_forward_convolutions_are_grouped_by_shape_and_counted():
  convs = step_convs.parse_convolutions(HLO)
  twice = convs + [dict(convs[0], name="again", op_name="jit(f)/other/conv_general_dilated")]
  groups = csbs.group_forward(twice)
  # the forward ones only (the excerpt's grouped conv has a plain `jit(f)` name: forward too)
  assert [(g["lhs_shape"], g["count"]) for g in groups] == [
      ((16, 64, 64, 1), 2), ((16, 4, 4, 128), 1), ((2, 8, 8, 16), 1)]
  assert groups[0]["ops"][1] == "jit(f)/other/conv_general_dilated"
  assert all(g["role"] == "forward" for g in groups)


def _torch_output_hw(layout: dict) -> tuple[int, int]:
  """conv2d's output size for `layout` (PyTorch's formula, F.pad first where given)."""
  _, _, h, w = layout["input"]
  if layout["pre_pad"]:
    left, right, top, bottom = layout["pre_pad"]
    h, w = h + top + bottom, w + left + right
  (sh, sw), (ph, pw) = layout["stride"], layout["padding"]
  kh, kw = layout["kernel"][2:]
  return (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1


def test_torch_layout_reproduces_each_output_shape():
  convs = _convs()
  fwd = csbs.torch_layout(convs["conv_general_dilated.183"])
  assert fwd == {"input": (16, 1, 64, 64), "kernel": (16, 1, 3, 3), "stride": (1, 1),
                 "padding": (1, 1), "pre_pad": None}
  strided = csbs.torch_layout(convs["conv_general_dilated.180"])
  assert strided["stride"] == (2, 2) and _torch_output_hw(strided) == (2, 2)
  # asymmetric padding (XLA's SAME for an even input and stride 2): F.pad first
  odd = dict(convs["conv_general_dilated.180"],
             window=dict(convs["conv_general_dilated.180"]["window"], padding=[(0, 1), (0, 1)]))
  layout = csbs.torch_layout(odd)
  assert layout["pre_pad"] == (0, 1, 0, 1) and layout["padding"] == (0, 0)
  assert _torch_output_hw(layout) == (2, 2)
  # what conv2d does not express as is: grouped, input- or kernel-dilated, negative padding
  assert csbs.torch_layout(convs["grouped.1"]) is None
  assert csbs.torch_layout(convs["convolution-base-dilated.5"]) is None
  assert csbs.torch_layout(convs["convolution-window-dilated.9"]) is None
  plain = convs["conv_general_dilated.183"]
  cropped = dict(plain, window=dict(plain["window"], padding=[(-1, 1), (1, 1)]))
  assert csbs.torch_layout(cropped) is None


def test_totals_weigh_each_shape_by_its_count():
  rows = [{"count": 3, "reference_median_s": 0.2, "ours_median_s": 0.1},
          {"count": 1, "reference_median_s": 0.1, "ours_median_s": 0.5}]
  t = csbs.totals(rows)
  assert t["convolutions"] == 4 and t["shapes"] == 2
  assert t["reference_s"] == pytest.approx(0.7) and t["ours_s"] == pytest.approx(0.8)
  assert t["ratio"] == pytest.approx(0.7 / 0.8)
  assert csbs.totals([])["ratio"] is None


def test_our_backward_callable_returns_the_output_and_both_gradients():
  conv = _convs()["conv_general_dilated.183"]
  small = dict(conv, lhs_shape=(2, 8, 8, 1), out_shape=(2, 8, 8, 16))
  y, dx, dk = csbs.our_fn(small, backward=True)()
  assert y.shape == (2, 8, 8, 16) and dx.shape == (2, 8, 8, 1) and dk.shape == (3, 3, 1, 16)
  # constant inputs: an interior output sums 9 taps of 0.1 × 0.01; dk's centre tap sums
  # x · g over all 2·8·8 positions
  np.testing.assert_allclose(np.asarray(y)[0, 4, 4, 0], 9 * 0.1 * 0.01, rtol=1e-6)
  np.testing.assert_allclose(np.asarray(dk)[1, 1, 0, 0], 2 * 8 * 8 * 0.1 * 0.001, rtol=1e-5)
  out = csbs.our_fn(small, backward=False)()
  assert out.shape == (2, 8, 8, 16)


@pytest.mark.parametrize("argv", [["--program", "eval"], ["--rounds", "0"], ["--warmup", "0"],
                                  ["--pause", "-1"], ["--threads", "0"], ["--batch", "-1"],
                                  ["--size", "huge"]])
def test_bad_arguments_are_usage_errors(argv):
  with pytest.raises(SystemExit) as e:
    csbs.parse_args(argv)
  assert e.value.code == 2


def test_batch_defaults_to_the_side_by_side_preset():
  assert csbs.parse_args(["--size", "paper"]).batch == 4
  assert csbs.parse_args(["--size", "paper", "--batch", "8"]).batch == 8
  assert csbs.parse_args([]).program == "infer"


def test_without_torch_exits_2_with_one_line_before_building_anything(monkeypatch, capsys):
  monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` raises ImportError
  monkeypatch.setattr(step_convs, "infer_programs", lambda args: pytest.fail("built"))
  assert csbs.main(["--size", "tiny"]) == 2
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1 and "PyTorch is not installed" in err



class _Compiled:
  def as_text(self):
    return ""


def test_a_program_without_a_plain_convolution_exits_2_with_one_line(monkeypatch, capsys):
  """Only grouped / dilated convolutions: nothing to compare, a one-line error, nothing written."""
  import types
  grouped = [c for c in step_convs.parse_convolutions(HLO) if c["name"] == "grouped.1"]
  assert grouped and grouped[0]["role"] == "forward"
  monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(  # never asked to compute
      __version__="0", set_num_threads=lambda n: None, set_flush_denormal=lambda b: None,
      manual_seed=lambda s: None))
  monkeypatch.setattr(step_convs, "infer_programs", lambda args: [("p", _Compiled(), 0.0)])
  monkeypatch.setattr(step_convs, "parse_convolutions", lambda text: grouped)
  wrote = []
  monkeypatch.setattr(csbs.torch_reference, "write_result", lambda *a: wrote.append(a))
  assert csbs.main(["--size", "tiny"]) == 2
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1 and "none of the 1 convolution shapes" in err
  assert not wrote


def test_without_torch_the_command_line_exits_2_without_a_traceback(tmp_path):
  """The script as run (`python -m benchmarks.conv_side_by_side`), in a Python without PyTorch:
  one stderr line, exit 2, nothing written."""
  import importlib.util
  import subprocess

  from tests.helpers import REPO
  if importlib.util.find_spec("torch") is not None:
    pytest.skip("PyTorch is installed here: the command would run the benchmark")
  out = tmp_path / "r.json"
  res = subprocess.run([sys.executable, "-m", "benchmarks.conv_side_by_side", "--size", "tiny",
                        "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=120)
  assert res.returncode == 2
  err = res.stderr.strip()
  assert len(err.splitlines()) == 1 and "PyTorch is not installed" in err, err
  assert "benchmarks.conv_side_by_side" in err
  assert "Traceback" not in res.stderr and not res.stdout.strip() and not out.exists()
