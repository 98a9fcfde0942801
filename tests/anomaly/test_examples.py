"""The DRAEM example grid: input | anomalous | label per row, laid out by utils.montage.grid."""

import numpy as np
import pytest

from sadm_jax.anomaly import draem, examples


def test_example_grid_layout_and_panels():
  pairs = [examples.brainlike_slice(32, seed=s) for s in range(3)]
  slices, masks = [p[0] for p in pairs], [p[1] for p in pairs]
  out = examples.example_grid(slices, seed=4, cfg=draem.DraemConfig(), brain_masks=masks)
  gap = examples._GAP
  assert out.dtype == np.uint8 and out.shape == (3 * 32 + 2 * gap, 3 * 32 + 2 * gap)
  rng = np.random.default_rng(4)  # the same draws, in the same order, as the grid's
  for i, (x, brain) in enumerate(pairs):
    x_ano, y = draem.synth_anomaly(x, rng, draem.DraemConfig(), brain_mask=brain)
    y0 = i * (32 + gap)
    for j, want in enumerate((x, x_ano, y)):
      x0 = j * (32 + gap)
      np.testing.assert_array_equal(out[y0:y0 + 32, x0:x0 + 32], examples._to_uint8(want))
    if i:
      np.testing.assert_array_equal(out[y0 - gap:y0], 128)  # mid-grey between rows
  np.testing.assert_array_equal(out[:, 32:32 + gap], 128)  # and between panels


@pytest.mark.parametrize("argv", [[], ["a.png", "six"], ["a.png", "0"], ["a.png", "101"],
                                  ["a.png", "2", "x"]])
def test_cli_bad_arguments_are_one_line_exit_2(argv, tmp_path, capsys):
  code = examples.cli([str(tmp_path / a) if a.endswith(".png") else a for a in argv])
  err = capsys.readouterr().err
  assert code == 2 and err.startswith("error: ") and err.count("\n") == 1
  assert not list(tmp_path.iterdir())


def test_cli_unwritable_output_is_one_line_exit_2(tmp_path, capsys):
  (tmp_path / "a_file").write_text("")
  assert examples.cli([str(tmp_path / "a_file" / "grid.png"), "1"]) == 2
  err = capsys.readouterr().err
  assert err.startswith("error: cannot write ") and err.count("\n") == 1


def test_cli_writes_the_grid(tmp_path):
  out = tmp_path / "grid.png"
  assert examples.cli([str(out), "2"]) == 0
  from PIL import Image
  assert Image.open(out).size == (3 * 96 + 2 * examples._GAP, 2 * 96 + examples._GAP)
