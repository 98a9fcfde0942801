"""PNG grid of DRAEM examples (input | anomalous | label) for eyeballing the anomaly generator."""

from __future__ import annotations

import os
import sys
from typing import Sequence

import numpy as np

from sadm_jax.anomaly import draem
from sadm_jax.utils import io, montage

_GAP = 2  # pixels of mid-grey between panels


def brainlike_slice(size: int = 96, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """A synthetic axial slice: textured ellipse with a darker rim and ventricle-like blobs.

  Returns (x [size, size] float32 in [0, 1], brain mask [size, size] bool).
  """
  rng = np.random.default_rng(seed)
  u, v = np.meshgrid(np.linspace(-1, 1, size), np.linspace(-1, 1, size), indexing="ij")
  r = np.sqrt(u ** 2 / 0.78 + v ** 2 / 0.6)
  brain = r < 1.0
  texture = draem.perlin_noise_2d((size, size), (8, 8), rng)
  x = 0.55 + 0.12 * texture + 0.15 * np.clip(1.0 - r, 0.0, 1.0)
  x -= 0.25 * (r > 0.85)  # darker cortex-like rim
  for du in (-0.18, 0.18):  # two dark "ventricles"
    x -= 0.35 * (((u - 0.05) ** 2 / 0.09 + (v - du) ** 2 / 0.012) < 1.0)
  x = np.clip(x, 0.0, 1.0) * brain
  return x.astype(np.float32), brain


def _to_uint8(x: np.ndarray) -> np.ndarray:
  return np.clip(np.round(np.asarray(x, np.float64) * 255.0), 0, 255).astype(np.uint8)


def example_grid(slices: Sequence[np.ndarray], seed: int, cfg: draem.DraemConfig,
                 brain_masks: Sequence[np.ndarray] | None = None) -> np.ndarray:
  """uint8 [N (H + gap), 3 W + 2 gap]: one row per slice, panels input | anomalous | label,
  laid out by `utils.montage.grid` on a mid-grey background (grey, one channel)."""
  rng = np.random.default_rng(seed)
  rows = []
  for i, x in enumerate(slices):
    brain = None if brain_masks is None else brain_masks[i]
    x_ano, y = draem.synth_anomaly(np.asarray(x, np.float32), rng, cfg, brain_mask=brain)
    rows.append([np.repeat(_to_uint8(v)[..., None], 3, axis=-1) for v in (x, x_ano, y)])
  return np.ascontiguousarray(montage.grid(rows, gap=_GAP, background=128)[..., 0])


def write_examples_png(path: str | os.PathLike, slices: Sequence[np.ndarray], seed: int,
                       cfg: draem.DraemConfig = draem.DraemConfig(),
                       brain_masks: Sequence[np.ndarray] | None = None) -> None:
  """Writes `example_grid(slices, seed, cfg, brain_masks)` as a grey PNG to `path`."""
  io.write_png(path, example_grid(slices, seed, cfg, brain_masks))


MAX_ROWS = 100  # a 9,600-pixel-high PNG; more is a typo, not a grid anyone reads
USAGE = ("usage: python -m sadm_jax.anomaly.examples OUT.png [N]  "
         f"(1 <= N <= {MAX_ROWS} rows, default 6)")


def cli(argv: Sequence[str]) -> int:
  """`OUT.png [N]`: writes N example rows of synthetic slices; bad arguments: one line, 2."""
  n = 6
  try:
    if not 1 <= len(argv) <= 2:
      raise ValueError(USAGE)
    if len(argv) == 2:
      n = int(argv[1]) if argv[1].strip().isdigit() else 0
      if not 1 <= n <= MAX_ROWS:
        raise ValueError(f"N={argv[1]!r} is not a number of rows in [1, {MAX_ROWS}]; {USAGE}")
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  pairs = [brainlike_slice(96, seed=s) for s in range(n)]
  try:
    write_examples_png(argv[0], [p[0] for p in pairs], seed=0)
  except OSError as e:  # a missing folder, no permission, a full disk
    print(f"error: cannot write {argv[0]}: {e.strerror or e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(cli(sys.argv[1:]))
