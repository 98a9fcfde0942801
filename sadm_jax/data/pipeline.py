"""grain input pipelines: random training slices, fixed validation slices, whole evaluation volumes."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Any, Sequence

import grain
import numpy as np

from sadm_jax.data import augment as augment_lib
from sadm_jax.data.cache import CachedVolume, VolumeCache, load_array
from sadm_jax.data.splits import Row


def data_identity(train: "SliceTable", val: "SliceTable") -> dict[str, str]:
  """What a run records of its training and validation tables: {'train', 'val'}: their
  `content_fingerprint` (what resuming and grain's iterator state check), and, apart, their rows'
  names and their volumes: {'train_names', 'train_volumes', 'val_names', 'val_volumes'}
  (`names_fingerprint`, `volumes_fingerprint`; runs trained before these recorded only the
  first two)."""
  out = {"train": train.content_fingerprint(), "val": val.content_fingerprint()}
  for key, table in (("train", train), ("val", val)):
    out[f"{key}_names"] = table.names_fingerprint()
    out[f"{key}_volumes"] = table.volumes_fingerprint()
  return out


@dataclasses.dataclass(frozen=True)
class SliceTable:
  """Picklable description of cached volumes (paths + per-slice statistics, no array data).

  Workers open the memory maps lazily, so a transform holding a table pickles cheaply.
  """
  entries: tuple[str, ...]  # cache entry directories, one per volume
  names: tuple[str, ...]  # the entries' names: each keeps the name of the row that first filled it
  slice_brain_voxels: np.ndarray  # [V, D] int
  has_seg: tuple[bool, ...]
  row_names: tuple[str, ...] | None = None  # the rows' own names (None: `names`)
  slice_lesion_voxels: np.ndarray | None = None  # [V, D] int, zeros for healthy (None: unknown)

  @classmethod
  def from_rows(cls, cache: VolumeCache, rows: Sequence[Row]) -> "SliceTable":
    metas, entries = [], []
    for r in rows:
      directory = cache.path(r)
      metas.append(cache.read_meta(directory))
      entries.append(directory)
    brain = np.asarray([m["slice_brain_voxels"] for m in metas], dtype=np.int64)
    lesion = np.asarray([m.get("slice_lesion_voxels") or [0] * len(m["slice_brain_voxels"])
                         for m in metas], dtype=np.int64).reshape(brain.shape)
    return cls(tuple(entries), tuple(m["name"] for m in metas), brain,
               tuple(bool(m["has_seg"]) for m in metas), tuple(r.name for r in rows), lesion)

  def __len__(self) -> int:
    return len(self.entries)

  def fingerprint(self) -> str:
    """A short hash of the volumes (cache entry directories) in order."""
    return hashlib.sha256("\n".join(self.entries).encode()).hexdigest()[:16]

  def content_fingerprint(self) -> str:
    """A short hash of the volumes as training sees them, not of where they are: names, label
    presence and per-slice brain voxel counts, in order. The same data moved (or preprocessed
    again into another cache) gives the same hash; other volumes or another split do not."""
    h = hashlib.sha256("\n".join(self.names).encode())
    h.update(bytes(self.has_seg))
    h.update(np.ascontiguousarray(self.slice_brain_voxels, np.int64).tobytes())
    return h.hexdigest()[:16]

  def names_fingerprint(self) -> str:
    """A short hash of the rows' own names in order (not the cache entries' names)."""
    names = self.names if self.row_names is None else self.row_names
    return hashlib.sha256("\n".join(names).encode()).hexdigest()[:16]

  def volumes_fingerprint(self) -> str:
    """A short hash of the volumes without any name: label presence and per-slice brain and
    lesion voxel counts, in order (a labelled volume's lesion tells it from another with the same
    brain mask). Renaming rows leaves it alone; other volumes, another order or another split do
    not."""
    brain = np.ascontiguousarray(self.slice_brain_voxels, np.int64)
    lesion = brain * 0 if self.slice_lesion_voxels is None else self.slice_lesion_voxels
    h = hashlib.sha256(b"volumes")
    h.update(bytes(self.has_seg))
    h.update(brain.tobytes())
    h.update(np.ascontiguousarray(lesion, np.int64).tobytes())
    return h.hexdigest()[:16]

  @property
  def num_slices(self) -> int:
    return int(self.slice_brain_voxels.shape[1])

  def orientation(self) -> str:
    """Axis codes (e.g. 'RAS') of the first volume's working-grid affine ('' for an empty table)."""
    if not self.entries:
      return ""
    import nibabel as nib
    with open(os.path.join(self.entries[0], "meta.json"), encoding="utf-8") as f:
      affine = np.asarray(json.load(f)["affine"], np.float64)
    return "".join(nib.orientations.aff2axcodes(affine))


class _ArrayOpener:
  """Per-process memory-map handles for a SliceTable (dropped when pickled to a worker)."""

  def __init__(self, table: SliceTable):
    self.table = table
    self._open: dict[tuple[int, str], np.ndarray] = {}

  def array(self, volume: int, name: str) -> np.ndarray:
    key = (volume, name)
    if key not in self._open:
      self._open[key] = load_array(self.table.entries[volume], name)
    return self._open[key]  # [D, H, W]

  def __getstate__(self):
    return {"table": self.table, "_open": {}}


def slice_probabilities(table: SliceTable, sampling: str) -> np.ndarray:
  """[V, D] per-volume slice distribution: 'uniform' (reference, Q29) or 'brain' (∝ brain voxels)."""
  v, d = table.slice_brain_voxels.shape
  if sampling == "uniform":
    return np.full((v, d), 1.0 / d)
  if sampling == "brain":
    w = table.slice_brain_voxels.astype(np.float64)
    empty = w.sum(axis=1) == 0
    w[empty] = 1.0  # a volume without brain voxels (cannot pass validation) falls back to uniform
    return w / w.sum(axis=1, keepdims=True)
  raise ValueError(f"unknown slice sampling {sampling!r}; expected 'uniform' or 'brain'")


class VolumeIndexSource(grain.sources.RandomAccessDataSource):
  """Records are volume indices; the slice is drawn per record by `TrainSlice`.

  Its repr names the table's content fingerprint, not where the volumes are cached: grain
  refuses to restore an iterator state saved for other volumes, and restores one saved for the
  same volumes cached elsewhere (`data.cache_dir` changed, the data moved).
  """

  def __init__(self, table: SliceTable):
    self._n = len(table)
    self._fingerprint = table.content_fingerprint()

  def __repr__(self) -> str:
    return f"VolumeIndexSource(n={self._n}, table={self._fingerprint})"

  def __len__(self) -> int:
    return self._n

  def __getitem__(self, index: int) -> int:
    return int(index)


class TrainSlice(grain.transforms.RandomMap):
  """Draws one axial slice of a volume and augments it; deterministic from grain's per-record rng.

  Output: {'image': [H, W, 1] float32, 'mask': [H, W, 1] uint8, 'seg': [H, W, 1] uint8 (zeros
  for healthy volumes), 'volume': int32, 'slice': int32}.
  """

  def __init__(self, table: SliceTable, sampling: str = "brain",
               augment: augment_lib.IntensityAugConfig | None = None, augment_3d: bool = False):
    self.table = table
    self.probs = slice_probabilities(table, sampling)
    self.augment = augment
    self.augment_3d = augment_3d
    self._arrays = _ArrayOpener(table)

  def random_map(self, element: int, rng: np.random.Generator) -> dict[str, Any]:
    v = int(element)
    k = int(rng.choice(self.probs.shape[1], p=self.probs[v]))
    image_vol = self._arrays.array(v, "image")
    if self.augment is not None and self.augment_3d:
      # Faithful (Q28): augment the whole volume [H, W, D], then take the slice.
      vol = augment_lib.augment(np.transpose(np.asarray(image_vol, np.float32), (1, 2, 0)), rng,
                                self.augment)
      image = vol[:, :, k]
    else:
      image = np.array(image_vol[k], dtype=np.float32)
      if self.augment is not None:
        image = augment_lib.augment(image, rng, self.augment)
    return _slice_record(self, v, k, image)


class FixedSlice(grain.transforms.Map):
  """Reads a fixed (volume, slice) record without augmentation (deterministic validation, Q26)."""

  def __init__(self, table: SliceTable):
    self.table = table
    self._arrays = _ArrayOpener(table)

  def map(self, element: tuple[int, int]) -> dict[str, Any]:
    v, k = (int(e) for e in element)
    return _slice_record(self, v, k, np.array(self._arrays.array(v, "image")[k], np.float32))


def _slice_record(t, v: int, k: int, image: np.ndarray) -> dict[str, Any]:
  mask = np.array(t._arrays.array(v, "mask")[k], dtype=np.uint8)
  seg = (np.array(t._arrays.array(v, "seg")[k], dtype=np.uint8) if t.table.has_seg[v]
         else np.zeros_like(mask))
  return {"image": image.astype(np.float32)[..., None], "mask": mask[..., None],
          "seg": seg[..., None], "volume": np.int32(v), "slice": np.int32(k)}


class ListSource(grain.sources.RandomAccessDataSource):
  """A random-access source over a fixed list of records."""

  def __init__(self, records: Sequence[Any]):
    self._records = list(records)

  def __repr__(self) -> str:
    digest = hashlib.sha256(repr(self._records).encode()).hexdigest()[:16]
    return f"ListSource(n={len(self._records)}, records={digest})"

  def __len__(self) -> int:
    return len(self._records)

  def __getitem__(self, index: int) -> Any:
    return self._records[index]


def validation_records(table: SliceTable, slices_per_volume: int) -> list[tuple[int, int]]:
  """Fixed (volume, slice) pairs: `slices_per_volume` slices evenly spread over the brain extent."""
  records = []
  for v in range(len(table)):
    brain = np.flatnonzero(table.slice_brain_voxels[v] > 0)
    if brain.size == 0:
      brain = np.arange(table.num_slices)
    n = min(slices_per_volume, brain.size)
    picks = brain[np.round(np.linspace(0, brain.size - 1, n)).astype(int)]
    records += [(v, int(k)) for k in np.unique(picks)]
  return records


def _shard(shard_index: int, shard_count: int, n: int, endless: bool
           ) -> grain.sharding.ShardOptions:
  # An endless stream never runs dry, so the processes' shards may differ by one volume; only a
  # finite one needs equal shards (processes stop together), dropping the last n % count volumes.
  # Where dropping changes nothing (n % count == 0, one process) the option stays True: it is part
  # of the loader state saved in checkpoints, which then still restore.
  return grain.sharding.ShardOptions(shard_index=shard_index, shard_count=shard_count,
                                     drop_remainder=not endless or n % shard_count == 0)


def train_loader(table: SliceTable, *, batch_size: int, seed: int, sampling: str = "brain",
                 augment: augment_lib.IntensityAugConfig | None = None, augment_3d: bool = False,
                 num_epochs: int | None = None, worker_count: int = 0, shard_index: int = 0,
                 shard_count: int = 1, read_threads: int = 16, prefetch: int = 500,
                 slice_op: grain.transforms.RandomMap | None = None) -> grain.DataLoader:
  """Endless (or `num_epochs`) shuffled training batches for THIS process.

  `batch_size` is the per-process batch; each process reads only its shard of the volumes
  (endless: every volume in some shard; `num_epochs`: equal shards, the last len % shard_count
  volumes left out); batches drop the remainder so shapes stay static. One record = one volume visit (an epoch
  has as many samples as volumes, as in the reference). `slice_op` replaces the default
  `TrainSlice(table, sampling, augment, augment_3d)` (e.g. a subclass adding anomalies).
  `read_threads` threads prepare up to `prefetch` records ahead of the batch being consumed
  (grain's defaults are 16 and 500; records read ahead when a run ends are wasted work, so the
  stages ask for a few batches). The numbers do not depend on either: each record's randomness
  comes from its own index.
  """
  shard = _shard(shard_index, shard_count, len(table), endless=num_epochs is None)
  sampler = grain.samplers.IndexSampler(num_records=len(table), shuffle=True, seed=seed,
                                        num_epochs=num_epochs, shard_options=shard)
  ops = [slice_op if slice_op is not None else TrainSlice(table, sampling, augment, augment_3d),
         grain.transforms.Batch(batch_size=batch_size, drop_remainder=True)]
  return grain.DataLoader(data_source=VolumeIndexSource(table), sampler=sampler,
                          operations=ops, worker_count=worker_count, shard_options=shard,
                          read_options=grain.ReadOptions(num_threads=read_threads,
                                                         prefetch_buffer_size=prefetch))


def validation_loader(table: SliceTable, *, batch_size: int, slices_per_volume: int = 8,
                      shard_index: int = 0, shard_count: int = 1,
                      drop_remainder: bool = False,
                      slice_op: grain.transforms.Map | None = None) -> grain.DataLoader:
  """One deterministic pass over fixed validation slices (no shuffling, no augmentation).

  `slice_op` replaces the default `FixedSlice(table)`; it maps a (volume, slice) record.
  """
  records = validation_records(table, slices_per_volume)
  shard = grain.sharding.ShardOptions(shard_index, shard_count, drop_remainder=drop_remainder)
  sampler = grain.samplers.IndexSampler(num_records=len(records), shuffle=False, num_epochs=1,
                                        shard_options=shard)
  ops = [slice_op if slice_op is not None else FixedSlice(table),
         grain.transforms.Batch(batch_size, drop_remainder=drop_remainder)]
  return grain.DataLoader(data_source=ListSource(records), sampler=sampler, operations=ops,
                          worker_count=0, shard_options=shard)


class VolumeSource(grain.sources.RandomAccessDataSource):
  """Whole preprocessed volumes for evaluation, one record per volume (50 slices = one batch)."""

  def __init__(self, cache: VolumeCache, rows: Sequence[Row]):
    self.cache = cache
    self.rows = list(rows)

  def __len__(self) -> int:
    return len(self.rows)

  def __getitem__(self, index: int) -> dict[str, Any]:
    row = self.rows[index]
    vol: CachedVolume = self.cache.load(row, mmap=False)
    seg = vol.seg if vol.seg is not None else np.zeros_like(vol.mask)
    # The row's name, not the entry's meta: an entry (keyed by its files) keeps the name of the
    # row that computed it.
    return {"image": vol.image[..., None], "mask": vol.mask[..., None], "seg": seg[..., None],
            "name": row.name, "dataset": row.dataset, "affine": vol.affine,
            "index": np.int32(index)}


def eval_volumes(cache: VolumeCache, rows: Sequence[Row], shard_index: int = 0,
                 shard_count: int = 1) -> grain.MapDataset:
  """This process's share of whole volumes: dicts with image/mask/seg [D, H, W, 1], name, affine."""
  ds = grain.MapDataset.source(VolumeSource(cache, rows))
  return ds[shard_index::shard_count]
