"""benchmarks/png_write.py: both writers timed, sizes reported, pixels checked."""

import numpy as np

from benchmarks import png_write


def test_measure_times_both_writers_and_checks_the_pixels(tmp_path):
  image = np.random.default_rng(0).integers(0, 256, (12, 10, 3), dtype=np.uint8)
  r = png_write.measure(image, str(tmp_path), repeats=2)
  assert r["shape"] == [12, 10, 3] and r["lossless"] is True
  assert r["package_s_median"] > 0 and r["default_s_median"] > 0
  assert r["package_bytes"] > 0 and r["default_bytes"] > 0
