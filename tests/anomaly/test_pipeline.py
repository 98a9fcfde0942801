"""Anomalous-slice grain transforms: per-record determinism, labels matching the image change, fixed validation."""

import os

import numpy as np
import pytest

from configs import sadm_draem
from sadm_jax import config as config_lib
from sadm_jax.anomaly import pipeline as anomaly_pipeline
from sadm_jax.anomaly.draem import DraemConfig
from sadm_jax.data import augment, cache as cache_lib, layout, pipeline, splits
from sadm_jax.data.preprocess import PreprocessConfig
from tests.data import fake_data

CFG = PreprocessConfig(crop_size=(64, 64, 16))  # 32×32×8 working grid


@pytest.fixture(scope="module")
def table(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("dd"))
  fake_data.write_data_dir(root, n_ixi=6, n_patho=1)
  s, _ = splits.load_splits(layout.resolve_data_root(root), ["IXI_train_fold0"])
  rows = s["IXI_train_fold0"]
  cache_dir = os.path.join(root, "cache")
  cache_lib.ensure_cached(rows, cache_dir, CFG)
  return pipeline.SliceTable.from_rows(cache_lib.VolumeCache(cache_dir, CFG), rows)


def _equal(a: dict, b: dict) -> bool:
  return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_train_transform_is_deterministic_per_record(table):
  op = anomaly_pipeline.AnomalousTrainSlice(table, DraemConfig(), "uniform",
                                            augment.IntensityAugConfig())
  a = op.random_map(2, np.random.default_rng(7))
  b = op.random_map(2, np.random.default_rng(7))
  assert _equal(a, b)
  assert a["image"].shape == a["clean"].shape == (32, 32, 1) and a["image"].dtype == np.float32
  assert a["seg"].shape == (32, 32, 1) and a["seg"].dtype == np.uint8
  others = [op.random_map(2, np.random.default_rng(s)) for s in range(8, 12)]
  assert any(not np.array_equal(a["image"], o["image"]) for o in others)


@pytest.mark.parametrize("restrict", [False, True])
def test_labels_match_the_image_change(table, restrict):
  op = anomaly_pipeline.AnomalousTrainSlice(table, DraemConfig(restrict_to_brain=restrict),
                                            "brain")
  anomalous = 0
  for seed in range(12):
    r = op.random_map(seed % len(table), np.random.default_rng(seed))
    x, x_ano, y = r["clean"][..., 0], r["image"][..., 0], r["seg"][..., 0].astype(bool)
    assert set(np.unique(y)) <= {False, True}
    np.testing.assert_array_equal(x_ano[~y], x[~y])  # untouched outside the label
    if y.any():
      anomalous += 1
      assert np.mean(x_ano[y] != x[y]) > 0.5  # and changed (almost everywhere) inside it
    if restrict:
      assert not (y & (r["mask"][..., 0] == 0)).any()  # Q25 option: inside the brain only
  assert anomalous >= 6


def test_no_anomaly_when_p_is_zero(table):
  op = anomaly_pipeline.AnomalousTrainSlice(table, DraemConfig(p_anomalous=0.0), "brain")
  r = op.random_map(0, np.random.default_rng(0))
  np.testing.assert_array_equal(r["image"], r["clean"])
  assert not r["seg"].any()


def _batches(table, **kw):
  return list(anomaly_pipeline.draem_validation_loader(table, DraemConfig(), batch_size=4,
                                                       seed=3, slices_per_volume=3, **kw))


def test_validation_batches_are_fixed(table):
  first, second = _batches(table), _batches(table)
  assert len(first) == len(second) > 0
  for a, b in zip(first, second):
    assert _equal(a, b)
  seg = np.concatenate([b["seg"] for b in first])
  assert seg.sum() > 0
  # Fixed slices without augmentation: the clean image is the cached slice itself.
  plain = list(pipeline.validation_loader(table, batch_size=4, slices_per_volume=3))
  for a, p in zip(first, plain):
    np.testing.assert_array_equal(a["clean"], p["image"])
    np.testing.assert_array_equal(a["slice"], p["slice"])
  # The anomaly is tied to the record, not to its batch or shard.
  shard1 = _batches(table, shard_index=1, shard_count=2)
  recs = {(int(v), int(k)): img for b in first
          for v, k, img in zip(b["volume"], b["slice"], b["image"])}
  for b in shard1:
    for v, k, img in zip(b["volume"], b["slice"], b["image"]):
      np.testing.assert_array_equal(img, recs[(int(v), int(k))])


def test_train_loader_batches_are_reproducible(table):
  def first_batch(**read):
    loader = anomaly_pipeline.draem_train_loader(table, DraemConfig(), batch_size=4, seed=5,
                                                 augment=augment.IntensityAugConfig(), **read)
    return next(iter(loader))

  a, b = first_batch(), first_batch(read_threads=2, prefetch=4)
  assert _equal(a, b)  # threads and read-ahead change no number
  assert a["image"].shape == (4, 32, 32, 1) and set(a) >= {"image", "seg", "clean", "mask"}


def test_draem_config_from_config():
  c = sadm_draem.get_config()
  with pytest.raises(ValueError, match="unresolved"):
    anomaly_pipeline.draem_config(c)
  assert anomaly_pipeline.draem_config(config_lib.resolve(c)) == DraemConfig()
  c.faithful = True
  c.anomaly.restrict_to_brain = True
  d = anomaly_pipeline.draem_config(config_lib.resolve(c))
  assert d.faithful_uint8_wrap and d.restrict_to_brain and d.p_anomalous == 1.0


def test_anomalies_differ_between_processes_and_between_visits(table):
  """Each record's anomaly comes from its global index: two processes (shards) never get copies
  of each other's anomalies, and a volume drawn again in a later epoch gets a new one."""
  def batches(shard_index, shard_count, n):
    it = iter(anomaly_pipeline.draem_train_loader(table, DraemConfig(), batch_size=2, seed=5,
                                                  shard_index=shard_index,
                                                  shard_count=shard_count))
    return [next(it) for _ in range(n)]

  segs = lambda bs: [s.tobytes() for b in bs for s in b["seg"] if s.any()]
  a, b = segs(batches(0, 2, 4)), segs(batches(1, 2, 4))
  assert len(a) >= 4 and len(b) >= 4 and not set(a) & set(b)
  visits = {}
  for batch in batches(0, 1, 2 * len(table)):  # four epochs of the table
    for v, s in zip(batch["volume"], batch["seg"]):
      if s.any():
        visits.setdefault(int(v), []).append(s.tobytes())
  assert sum(len(s) for s in visits.values()) >= 8
  assert all(len(set(s)) == len(s) for s in visits.values())
