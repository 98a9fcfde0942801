"""benchmarks/init_program.py: its ULP distance between two float32 states."""

import numpy as np

from benchmarks import init_program


def test_ulps_counts_representable_steps_across_zero():
  one = np.float32(1.0)
  a = np.array([one, 0.0, -one, 2.0], np.float32)
  b = np.array([np.nextafter(one, np.float32(2)), 0.0, -one, 2.0], np.float32)
  assert init_program._ulps(a, a) == 0
  assert init_program._ulps(a, b) == 1
  tiny = np.float32(np.finfo(np.float32).smallest_subnormal)
  # -0 and +0 coincide; ±smallest subnormal are two steps apart
  assert init_program._ulps(np.array([tiny], np.float32), np.array([-tiny], np.float32)) == 2
  far = np.array([np.nextafter(np.nextafter(one, np.float32(0)), np.float32(0))], np.float32)
  assert init_program._ulps(np.array([one]), far) == 2
