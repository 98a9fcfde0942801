"""TFDS builder packing preprocessed splits into array_record slice records, readable without TensorFlow.

One TFDS config per data set (`sadm_slices/IXI`, `sadm_slices/Brats21`, ...); one TFDS split per
source split with the data-set prefix removed (`IXI_train_fold0` → `train_fold0`,
`Brats21_test` → `test`). Each record is one axial slice:
{'image': [H, W] float32, 'mask': [H, W] uint8, 'seg': [H, W] uint8, 'name': str,
 'volume': int32, 'slice': int32, 'label': int32}.

Only TensorFlow-free TFDS features are used: `file_format='array_record'`, `Tensor`, `Scalar`
and `Text` features, `DatasetInfo` built directly (not from metadata files), and reading through
`tfds.data_source` / `builder.as_data_source` (never `tfds.load`/`as_dataset`, which need TF).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from typing import Sequence

import numpy as np
import tensorflow_datasets as tfds

from sadm_jax.data import layout
from sadm_jax.data.cache import VolumeCache
from sadm_jax.data.errors import DataError
from sadm_jax.data.splits import Row
from sadm_jax.utils import io

NAME = "sadm_slices"
CONTENT_FILE = "sadm_content.json"  # next to the packed files: what they were packed from


def tfds_split(split: str) -> str:
  """'IXI_train_fold0' → 'train_fold0'."""
  info = layout.parse_split_name(split)
  return split[len(info.dataset) + 1:]


class SadmSlices(tfds.core.GeneratorBasedBuilder):
  """Axial slices of preprocessed volumes (96×96 at the paper configuration)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Slices of the sadm_jax preprocessing cache."}
  BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=d, description=f"{d} slices")
                     for d in layout.DATASETS]

  def __init__(self, *, splits: dict[str, Sequence[Row]] | None = None,
               cache: VolumeCache | None = None, **kwargs):
    self._splits = splits or {}
    self._cache = cache
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__.splitlines()[0],
        disable_shuffling=True,  # records in (volume, slice) order
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Tensor(shape=(None, None), dtype=np.float32, encoding="bytes"),
            "mask": tfds.features.Tensor(shape=(None, None), dtype=np.uint8, encoding="bytes"),
            "seg": tfds.features.Tensor(shape=(None, None), dtype=np.uint8, encoding="bytes"),
            "name": tfds.features.Text(),
            "volume": tfds.features.Scalar(dtype=np.int32),
            "slice": tfds.features.Scalar(dtype=np.int32),
            "label": tfds.features.Scalar(dtype=np.int32),
        }))

  def _split_generators(self, dl_manager):
    if self._cache is None:
      raise ValueError(f"{NAME}: building needs `splits` and `cache` (use pack_splits)")
    return {tfds_split(name): self._generate_examples(rows) for name, rows in self._splits.items()}

  def _generate_examples(self, rows: Sequence[Row]):
    for v, row in enumerate(rows):
      vol = self._cache.load(row)
      seg = vol.seg if vol.seg is not None else np.zeros_like(vol.mask)
      for k in range(vol.image.shape[0]):
        yield f"{v:06d}_{k:03d}", {
            "image": np.asarray(vol.image[k], np.float32), "mask": np.asarray(vol.mask[k]),
            "seg": np.asarray(seg[k]), "name": row.name, "volume": v, "slice": k,
            "label": row.label}


def pack_splits(cache: VolumeCache, splits: dict[str, Sequence[Row]], out_dir: str) -> dict[str, str]:
  """Packs the given (already cached) splits; returns {data set: TFDS dataset directory}.

  Splits of one data set are packed together; a data set already packed under `out_dir` from
  the same volumes (the same cache entries: files and preprocessing configuration) is not rebuilt,
  one packed from others raises DataError. Read back with `open_split(out_dir, split)`.
  """
  by_dataset: dict[str, dict[str, Sequence[Row]]] = {}
  for name, rows in splits.items():
    by_dataset.setdefault(layout.parse_split_name(name).dataset, {})[name] = rows
  out = {}
  for dataset, group in by_dataset.items():
    builder = SadmSlices(config=dataset, splits=group, cache=cache, data_dir=out_dir,
                         file_format="array_record")
    have = set(builder.info.splits.keys()) if builder.data_path.exists() else set()
    if have and have != {tfds_split(n) for n in group}:
      raise ValueError(f"{builder.data_path}: already packed with splits {sorted(have)}; "
                       f"use a new output directory to pack {sorted(group)}")
    content = _content(cache, group)
    record = os.path.join(os.fspath(builder.data_path), CONTENT_FILE)
    if have:
      if not os.path.isfile(record):
        logging.warning("%s: packed before its content was recorded; reusing it unchecked",
                        builder.data_path)
      elif _read_json(record) != content:
        raise DataError(f"{builder.data_path}: already packed from other volumes (other rows or "
                        f"another preprocessing configuration) under the split names "
                        f"{sorted(group)}; use a new output directory")
    builder.download_and_prepare(file_format="array_record")
    if not have:
      io.write_json(record, content)
    out[dataset] = os.fspath(builder.data_path)
  return out


def _content(cache: VolumeCache, group: dict[str, Sequence[Row]]) -> dict:
  """{'sha256': digest of every split's cache entries in order}: changes with any row, file or
  preprocessing setting that changes what would be packed."""
  entry = lambda r: os.path.relpath(cache.path(r), os.path.dirname(cache.root))  # <config>/<files>
  text = json.dumps({name: [entry(r) for r in rows] for name, rows in sorted(group.items())})
  return {"sha256": hashlib.sha256(text.encode()).hexdigest()}


def _read_json(path: str):
  with open(path, encoding="utf-8") as f:
    try:
      return json.load(f)
    except ValueError:
      return None  # damaged: not the content asked for


def open_split(out_dir: str, split: str):
  """A grain-compatible random-access source over the packed slices of `split`."""
  info = layout.parse_split_name(split)
  return tfds.data_source(f"{NAME}/{info.dataset}", split=tfds_split(split), data_dir=out_dir,
                          builder_kwargs={"file_format": "array_record"}, download=False)
