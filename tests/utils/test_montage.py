"""Montage building blocks: panel colours, contours, the colour bar and the titled grid layout."""

import numpy as np
import pytest

from sadm_jax.utils import montage as mt


def _panel(h, w, colour) -> np.ndarray:
  return np.full((h, w, 3), colour, np.uint8)


def test_grey_colormap_contour_known_answers():
  g = mt.grey(np.array([[-1.0, 0.0, 0.5, 1.0, 2.0]]))
  assert g.shape == (1, 5, 3) and g.dtype == np.uint8
  np.testing.assert_array_equal(g[0, :, 0], [0, 0, 128, 255, 255])
  np.testing.assert_array_equal(mt.grey(np.array([[10.0]]), lo=10, hi=20)[0, 0], [0, 0, 0])
  c = mt.colormap(np.array([[0.0, 0.5, 1.0, 3.0]]), vmax=1.0)
  np.testing.assert_array_equal(c[0], [[0, 0, 4], [188, 55, 84], [252, 255, 164], [252, 255, 164]])
  m = np.zeros((5, 5), bool)
  m[1:4, 1:4] = True
  want = m.copy()
  want[2, 2] = False  # the only voxel with all four neighbours inside
  np.testing.assert_array_equal(mt.contour(m), want)
  np.testing.assert_array_equal(mt.contour(np.ones((2, 2), bool)), np.ones((2, 2), bool))


def test_colormap_brightness_is_monotone():
  ramp = mt.colormap(np.linspace(0.0, 2.0, 101), vmax=2.0).astype(int).sum(-1)
  assert np.all(np.diff(ramp) >= 0) and ramp[-1] > ramp[0]


def test_grid_places_panels_in_cells_without_titles():
  a, b, c, d = (_panel(4, 6, 10), _panel(2, 3, 20), _panel(5, 2, 30), _panel(3, 8, 40))
  out = mt.grid([[a, b], [c, d]], gap=2, background=7)
  # columns 6 and 8 wide, rows 4 and 5 high, gap 2: [4 + 2 + 5, 6 + 2 + 8]
  assert out.shape == (11, 16, 3) and out.dtype == np.uint8
  np.testing.assert_array_equal(out[0:4, 0:6], a)
  np.testing.assert_array_equal(out[4:6], 7)  # the gap between rows
  np.testing.assert_array_equal(out[:, 6:8], 7)  # the gap between columns
  np.testing.assert_array_equal(out[1:3, 8 + 2:8 + 5], b)  # centred in its 4 × 8 cell
  np.testing.assert_array_equal(out[6:11, 2:4], c)  # centred in its 5 × 6 cell
  np.testing.assert_array_equal(out[6 + 1:6 + 4, 8:16], d)
  assert int((out == 10).all(-1).sum()) == a.shape[0] * a.shape[1]
  assert int((out == 20).all(-1).sum()) == b.shape[0] * b.shape[1]


def test_grid_empty_cells_and_short_rows_stay_background():
  out = mt.grid([[_panel(3, 3, 50), None, _panel(3, 3, 60)], [_panel(3, 3, 70), _panel(3, 3, 80)]],
                gap=1)
  assert out.shape == (7, 11, 3)
  np.testing.assert_array_equal(out[0:3, 4:7], 0)  # the empty cell
  np.testing.assert_array_equal(out[4:7, 8:11], 0)  # the short row's missing cell
  np.testing.assert_array_equal(out[0:3, 8:11], 60)
  np.testing.assert_array_equal(out[4:7, 4:7], 80)


def test_grid_column_titles_sit_in_a_strip_above_their_columns():
  rows = [[_panel(40, 60, 200), _panel(40, 60, 100)]] * 2
  plain = mt.grid(rows, gap=4, background=0)
  titled = mt.grid(rows, col_titles=["input", "reconstruction"], gap=4, background=0)
  strip = titled.shape[0] - plain.shape[0]
  assert strip > 5 and titled.shape[1] == plain.shape[1]
  np.testing.assert_array_equal(titled[strip:], plain)  # the panels move down by the strip only
  for x0, x1 in ((0, 60), (64, 124)):
    assert np.any(titled[:strip, x0:x1] != 0)  # each column's title is drawn
  np.testing.assert_array_equal(titled[:strip, 60:64], 0)  # and stays within its column
  # An untitled column keeps a blank strip; a long title wraps onto more lines, within its column.
  half = mt.grid(rows, col_titles=[None, "reconstruction"], gap=4)
  assert half.shape == titled.shape and not np.any(half[:strip, :60])
  long = mt.grid(rows, col_titles=["prediction (red) vs ground truth (green)", None], gap=4)
  assert long.shape[0] > titled.shape[0]
  assert np.any(long[:long.shape[0] - plain.shape[0], :60]) and not np.any(long[:, 60:64])


def test_grid_row_titles_and_right_image():
  rows = [[_panel(30, 40, 90), _panel(30, 50, 90)], [_panel(20, 40, 90), _panel(30, 50, 90)]]
  bar = _panel(70, 9, 222)
  out = mt.grid(rows, col_titles=["axial", "coronal"], row_titles=["Brats21 BraTS2021_00003",
                                                                   "IXI IXI002"],
                right=bar, gap=4, background=0)
  col_only = mt.grid(rows, col_titles=["axial", "coronal"], gap=4)
  top = col_only.shape[0] - (30 + 4 + 30)  # the column-title strip
  row_strip = (out.shape[0] - col_only.shape[0]) // 2
  assert row_strip > 5 and out.shape[0] == col_only.shape[0] + 2 * row_strip
  assert out.shape[1] == 40 + 4 + 50 + 4 + 9
  assert np.any(out[top:top + row_strip, :94] != 0)  # first row's title above it
  y1 = top + row_strip + 30 + 4  # second row's strip
  assert np.any(out[y1:y1 + row_strip, :94] != 0)
  np.testing.assert_array_equal(out[top + row_strip:top + row_strip + 30, :40], 90)
  np.testing.assert_array_equal(out[y1 + row_strip + 5:y1 + row_strip + 25, :40], 90)
  np.testing.assert_array_equal(out[top:top + 70, 98:107], bar)  # right of the grid, below titles
  np.testing.assert_array_equal(out[:top, 94:], 0)


def test_grid_refuses_non_rgb_panels_and_mismatched_row_titles():
  with pytest.raises(ValueError, match=r"panel \(0, 1\) must be uint8"):
    mt.grid([[_panel(2, 2, 0), np.zeros((2, 2), np.float32)]])
  with pytest.raises(ValueError, match="2 row titles for 1 rows"):
    mt.grid([[_panel(2, 2, 0)]], row_titles=["a", "b"])


def test_colour_bar_ramp_ticks_and_label():
  bar = mt.colour_bar(200, 0.0, 0.567, "anomaly score")
  assert bar.dtype == np.uint8 and bar.ndim == 3 and bar.shape[0] == 200 and bar.shape[2] == 3
  column = bar[:, 3 + 6].astype(int).sum(-1)  # a column through the middle of the bar
  lit = np.flatnonzero(column > 0)
  last = lit[-1]
  first = last - int(np.argmin(column[last::-1] > 0)) + 1  # the bar: the lowest lit run
  on_ramp = np.arange(first, last + 1)
  ramp = column[first:last + 1]
  assert len(ramp) > 100
  assert np.all(np.diff(ramp) <= 0)  # brightest (vmax) at the top, darkest (vmin) at the bottom
  np.testing.assert_array_equal(bar[on_ramp[0], 3 + 6], mt.colormap(np.array(1.0), 1.0))
  assert np.any(bar[:12] != 0)  # the label
  right = bar[:, 3 + 12 + 6:]
  assert np.any(right[on_ramp[0] - 6:on_ramp[0] + 6] != 0)  # the vmax tick label
  assert np.any(right[on_ramp[-1] - 6:on_ramp[-1] + 6] != 0)  # the vmin tick label
  wider = mt.colour_bar(200, 0.0, 123456.0, "a")
  assert wider.shape[1] > mt.colour_bar(200, 0.0, 1.0, "a").shape[1]  # fits its tick labels
  with pytest.raises(ValueError, match="no room for the bar"):
    mt.colour_bar(20, 0.0, 1.0, "x")


def test_evaluation_montage_titles_its_columns_and_shows_the_anomaly_scale(monkeypatch):
  from sadm_jax.evaluate import report

  calls = {}
  real_grid, real_bar = mt.grid, mt.colour_bar

  def grid(rows, **kw):
    calls["grid"] = (rows, kw)
    return real_grid(rows, **kw)

  def colour_bar(height, vmin, vmax, label, **kw):
    calls["bar"] = (height, vmin, vmax, label)
    return real_bar(height, vmin, vmax, label, **kw)

  monkeypatch.setattr(mt, "grid", grid)
  monkeypatch.setattr(mt, "colour_bar", colour_bar)
  shape = (24, 32, 10)
  mask = np.zeros(shape, bool)
  mask[2:22, 3:29, 1:9] = True
  image = np.where(mask, 0.7, 0.0)
  gt = np.zeros(shape, bool)
  gt[8:12, 10:14, 4:6] = True
  anomaly = np.where(gt, 0.8, 0.1) * mask
  pred = anomaly > 0.5
  out = report.montage(image, anomaly, pred, mask, recon=image * 0.9, gt=gt)
  rows, kw = calls["grid"]
  assert kw["col_titles"] == ["input", "reconstruction", "anomaly map",
                              "prediction (red) vs ground truth (green)"]
  assert len(rows) == 2 and all(len(r) == 4 for r in rows)  # the two lesion slices
  h, w = rows[0][0].shape[:2]
  assert (h, w) == ((26 + 4) * 6, (20 + 4) * 6)  # brain box + margin, rotated, enlarged ×6
  height, vmin, vmax, label = calls["bar"]
  assert (vmin, vmax) == (0.0, pytest.approx(0.81)) and label == "anomaly score"
  assert height == 2 * h + kw["gap"]
  assert out.dtype == np.uint8 and out.shape[1] > 4 * w and out.shape[0] > 2 * h
  background = kw["background"]
  strip = out.shape[0] - height
  for c in range(4):  # every column has its title drawn
    x0 = c * (w + kw["gap"])
    assert np.any(out[:strip, x0:x0 + w] != background)
  out = report.montage(image, anomaly, pred, mask, gt=None)
  assert calls["grid"][1]["col_titles"][1] == "reconstruction (none)"
  assert not calls["grid"][0][0][1].any()  # a black panel in its place
