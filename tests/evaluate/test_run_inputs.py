"""Evaluation inputs that cannot give a meaningful τ are refused naming the split (evaluate.run)."""

from types import SimpleNamespace

import numpy as np
import pytest

from sadm_jax.evaluate import run as run_lib


def _evaluation(gts, faithful=False):
  rng = np.random.default_rng(0)
  maps = [rng.random((4, 6, 6)).astype(np.float32) for _ in gts]
  masks = [np.pad(np.ones((4, 4, 4), np.uint8), ((0, 0), (1, 1), (1, 1))) for _ in gts]
  store = SimpleNamespace(volumes=lambda run, s, split, names: iter(zip(maps, gts, masks)))
  config = SimpleNamespace(evaluate=SimpleNamespace(threshold_method="exact"))
  return SimpleNamespace(store=store, faithful=faithful, config=config)


def test_a_validation_split_without_lesions_is_refused():
  """Segmentations that are all empty (a wrong seg_path, a label-less export): every τ had Dice
  0, one was 'selected' and the report showed a test Dice of 0.00 without a word."""
  run = SimpleNamespace(id="threshold/none/fold0")
  p = SimpleNamespace(set_name="Brats21", split="val")
  empty = [np.zeros((4, 6, 6), np.uint8) for _ in range(2)]
  with pytest.raises(ValueError, match=r"^Brats21_val: no lesion voxel in the segmentations of "
                                       r"its 2 volume\(s\) inside the brain masks "
                                       r"\(threshold/none/fold0\): τ cannot be chosen"):
    run_lib._pooled_tau(_evaluation(empty), run, p, ["a", "b"])
  outside = [g.copy() for g in empty]
  outside[1][0, 0, 0] = 1  # only outside the brain: what the default protocol never scores
  with pytest.raises(ValueError, match="no lesion voxel"):
    run_lib._pooled_tau(_evaluation(outside), run, p, ["a", "b"])
  run_lib._pooled_tau(_evaluation(outside, faithful=True), run, p, ["a", "b"])  # whole grid
  inside = [g.copy() for g in empty]
  inside[0][1, 2, 2] = 1
  dice, tau = run_lib._pooled_tau(_evaluation(inside), run, p, ["a", "b"])
  assert dice > 0 and np.isfinite(tau)


def test_an_erosion_that_leaves_no_brain_is_refused_naming_the_volume():
  """evaluate.erode_mask=100 on a 64x64 grid: the maps were zero everywhere and the report showed
  τ 0 and a Dice computed from nothing."""
  from sadm_jax.evaluate import scoring
  mask = np.zeros((2, 12, 12), bool)
  mask[:, 3:9, 3:9] = True  # a 6x6 brain per slice: 3 iterations remove it
  assert scoring.eroded_brain(mask, 2, "v").sum() == 2 * 2 * 2
  assert not scoring.eroded_brain(np.zeros_like(mask), 5, "empty").any()  # nothing to erode
  with pytest.raises(ValueError, match=r"^--config.evaluate.erode_mask=3 erodes the brain mask of "
                                       r"Brats21_val_000 to nothing"):
    scoring.eroded_brain(mask, 3, "Brats21_val_000")
