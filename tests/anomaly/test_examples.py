"""The DRAEM example grid: input | anomalous | label per row, laid out by utils.montage.grid."""

import numpy as np

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
