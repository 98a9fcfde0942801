"""Predict's costly host work per scan, free of JAX so that spawned workers run it: read, check, reorient, preprocess."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from sadm_jax.data import orientation
from sadm_jax.data.preprocess import PreprocessConfig, preprocess_volume
from sadm_jax.evaluate.scans import load_scan


@dataclasses.dataclass
class Read:
  """One scan read, reoriented to the models' axis order and preprocessed: what the maps need to
  be computed and carried back to the scan's own grid."""
  input_shape: tuple  # the scan's grid [H, W, D] as stored
  input_affine: np.ndarray  # [4, 4], likewise
  reo: orientation.Reorientation  # its voxel order -> the training data's
  shape_t: tuple  # [H', W', D']: the scan's grid in the training data's order
  brain_t: np.ndarray  # bool [H', W', D']: its brain mask in that order
  work: Any  # `preprocess_volume`'s result: image, mask and affine on the working grid


def read_and_preprocess(image_path: str, mask_path: str | None, model_orientation: str,
                        cfg: PreprocessConfig) -> Read:
  """Reads and checks one scan (`scans.load_scan`), reorients it exactly (a flip/permutation to
  `model_orientation`, so the models see it as they saw their training data) and preprocesses it
  as the training data was; DataError naming the file when it cannot be used. Module-level and
  JAX-free: a worker process (`utils.workers.process_pool`) runs it."""
  img, mask = load_scan(image_path, mask_path)
  reo = orientation.reorientation(img.affine, img.data.shape, model_orientation)
  image_t, brain_t = reo.apply(img.data), reo.apply(mask) > 0  # [H', W', D'] training order
  work = preprocess_volume(image_t, brain_t.astype(np.uint8), None, reo.affine, cfg,
                           source=image_path)
  return Read(img.data.shape, img.affine, reo, image_t.shape, brain_t, work)
