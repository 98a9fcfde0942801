"""Tests for the preprocessing cache, grain pipelines and the TFDS builder on a tiny fake DATA_DIR."""

import os
import sys
import time

import numpy as np
import pytest

from sadm_jax.data import augment, cache as cache_lib, layout, pipeline, splits
from sadm_jax.data.preprocess import PreprocessConfig
from tests.data import fake_data

CFG = PreprocessConfig(crop_size=(32, 32, 16))  # tiny working grid 16×16×8


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("dd"))
  fake_data.write_data_dir(root, n_ixi=8, n_patho=2)
  data_root = layout.resolve_data_root(root)
  s, _ = splits.load_splits(data_root)
  cache_dir = os.path.join(root, "cache")
  rows = s["IXI_train_fold0"] + s["Brats21_val"]
  cache_lib.ensure_cached(rows, cache_dir, CFG)
  return data_root, s, cache_lib.VolumeCache(cache_dir, CFG)


def test_cache_layout_and_contents(prepared):
  _, s, cache = prepared
  row = s["Brats21_val"][0]
  vol = cache.load(row)
  assert vol.image.shape == (8, 16, 16) and vol.image.dtype == np.float32  # slice-major [D, H, W]
  assert isinstance(vol.image, np.memmap)
  assert vol.volume("image").shape == (16, 16, 8)
  assert set(np.unique(vol.seg)) <= {0, 1}  # BraTS labels binarised
  assert vol.meta["lesion_voxels"] == int(vol.seg.sum()) > 0
  assert vol.meta["slice_brain_voxels"] == vol.mask.sum(axis=(1, 2)).tolist()
  assert vol.affine.shape == (4, 4)
  assert not any(n.startswith(".tmp-") for n in os.listdir(cache.root))


def test_second_run_does_not_recompute_and_changes_invalidate(prepared, tmp_path):
  data_root, s, cache = prepared
  row = s["IXI_train_fold0"][0]
  entry = os.path.join(cache.path(row), "image.npy")
  before = os.stat(entry).st_mtime_ns
  cache_lib.ensure_cached([row], os.path.dirname(cache.root), CFG)
  assert os.stat(entry).st_mtime_ns == before
  # A different preprocessing config gets its own key.
  other = cache_lib.VolumeCache(os.path.dirname(cache.root), PreprocessConfig(crop_size=(32, 32, 16),
                                                                              curvature_flow=False))
  assert other.root != cache.root and not other.contains(row)
  # A changed source file invalidates its entry.
  import shutil
  copy_root = str(tmp_path / "copy")
  shutil.copytree(data_root.data_dir, copy_root, ignore=shutil.ignore_patterns("cache"))
  r2 = splits.read_split(layout.resolve_data_root(copy_root), "IXI_train_fold0")[0]
  c2 = cache_lib.VolumeCache(str(tmp_path / "c2"), CFG)
  killed, writing = os.path.join(c2.root, ".tmp-killed"), os.path.join(c2.root, ".tmp-writing")
  for d in (killed, writing):  # entries in the making: a writer killed hours ago, one at work
    os.makedirs(d)
  os.utime(killed, (time.time() - 7 * 3600,) * 2)
  cache_lib.ensure_cached([r2], str(tmp_path / "c2"), CFG)
  assert c2.contains(r2)
  assert not os.path.exists(killed) and os.path.isdir(writing)
  time.sleep(0.01)
  img, mask, _ = fake_data.make_subject(np.random.default_rng(9))
  fake_data.save(r2.img, img)
  assert not c2.contains(r2)


def test_cache_load_missing_entry_is_clear(prepared):
  _, s, cache = prepared
  from sadm_jax.data.errors import DataError
  with pytest.raises(DataError, match="not in the preprocessing cache"):
    cache.load(s["ATLAS_v2_test"][0])


def test_damaged_cache_entry_is_named_with_its_repair(prepared, tmp_path):
  """A truncated .npy or an unreadable meta.json in an entry (disk trouble): a DataError naming
  the file, in `load` and in the training loader's lazy memory maps; deleting the entry repairs it."""
  import shutil
  from sadm_jax.data.errors import DataError
  _, s, cache = prepared
  rows = s["IXI_train_fold0"][:2]
  copy = cache_lib.VolumeCache(str(tmp_path / "cache"), CFG)
  shutil.copytree(os.path.dirname(cache.root), os.path.dirname(copy.root))
  image = os.path.join(copy.path(rows[0]), "image.npy")
  with open(image, "r+b") as f:
    f.truncate(os.path.getsize(image) // 2)
  message = (f"{image}: damaged preprocessing cache entry (ValueError: mmap length is greater "
             f"than file size); delete {copy.path(rows[0])} and run again to recompute it")
  with pytest.raises(DataError) as e:
    copy.load(rows[0])
  assert str(e.value) == message
  table = pipeline.SliceTable.from_rows(copy, rows[:1])
  with pytest.raises(DataError) as e:
    pipeline._ArrayOpener(table).array(0, "image")
  assert str(e.value) == message
  meta = os.path.join(copy.path(rows[1]), "meta.json")
  with open(meta, "w") as f:
    f.write('{"name": ')
  with pytest.raises(DataError, match=f"^{meta}: damaged preprocessing cache entry"):
    pipeline.SliceTable.from_rows(copy, rows[1:])
  shutil.rmtree(copy.path(rows[0]))
  cache_lib.ensure_cached(rows[:1], os.path.dirname(copy.root), CFG)
  assert copy.load(rows[0]).image.shape == (8, 16, 16)


def test_unwritable_cache_is_one_error_only_when_something_must_be_written(prepared, tmp_path):
  from sadm_jax.data.errors import DataError
  _, s, cache = prepared
  rows = s["IXI_train_fold0"][:2]
  afile = tmp_path / "afile"
  afile.write_text("")
  with pytest.raises(DataError) as e:
    cache_lib.ensure_cached(rows, str(afile), CFG)
  assert str(e.value) == (f"{afile}/{CFG.key()}: cannot write the preprocessing cache (Not a "
                          "directory) for 2 volume(s) not yet in it; set --config.data.cache_dir "
                          "to a writable directory")
  assert len(cache_lib.ensure_cached(rows, os.path.dirname(cache.root), CFG)) == 2  # all cached


def _batches(loader, n):
  it = iter(loader)
  return [next(it) for _ in range(n)]


def test_train_loader_shapes_determinism_and_sharding(prepared):
  _, s, cache = prepared
  table = pipeline.SliceTable.from_rows(cache, s["IXI_train_fold0"])
  kw = dict(batch_size=2, seed=1, augment=augment.IntensityAugConfig())
  a = _batches(pipeline.train_loader(table, **kw), 4)
  b = _batches(pipeline.train_loader(table, **kw), 4)
  assert a[0]["image"].shape == (2, 16, 16, 1) and a[0]["image"].dtype == np.float32
  assert a[0]["seg"].shape == (2, 16, 16, 1) and not a[0]["seg"].any()
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x["image"], y["image"])
  # Reading threads and read-ahead change no number (each record's randomness is its own).
  lean = _batches(pipeline.train_loader(table, **kw, read_threads=1, prefetch=2), 4)
  for x, y in zip(a, lean):
    np.testing.assert_array_equal(x["image"], y["image"])
  c = _batches(pipeline.train_loader(table, **{**kw, "seed": 2}), 4)
  assert any(not np.array_equal(x["image"], y["image"]) for x, y in zip(a, c))
  # Two process shards of one epoch see disjoint volumes.
  seen = []
  for shard in range(2):
    loader = pipeline.train_loader(table, batch_size=1, seed=1, num_epochs=1, shard_index=shard,
                                   shard_count=2)
    seen.append({int(x["volume"][0]) for x in loader})
  assert seen[0].isdisjoint(seen[1]) and len(seen[0]) == len(seen[1]) == len(table) // 2


@pytest.mark.parametrize("shard_count", [2, 3])
def test_endless_training_shards_leave_no_volume_out(prepared, shard_count):
  """Training loaders are endless: the processes' shards need not be equal, so none of the
  len(table) % processes last volumes may be dropped for good (5 volumes: 3 + 2, or 2 + 2 + 1)."""
  _, s, cache = prepared
  table = pipeline.SliceTable.from_rows(cache, s["IXI_train_fold0"])
  assert len(table) % shard_count
  seen = set()
  for shard in range(shard_count):
    it = iter(pipeline.train_loader(table, batch_size=1, seed=1, shard_index=shard,
                                    shard_count=shard_count))
    seen |= {int(next(it)["volume"][0]) for _ in range(2 * len(table))}
  assert seen == set(range(len(table)))
  # The sharding option (part of the loader state in checkpoints) is unchanged wherever dropping
  # changed nothing, so runs saved before still resume; finite loaders keep equal shards.
  drop = lambda count, n, endless: pipeline._shard(0, count, n, endless).drop_remainder
  assert drop(1, 5, True) and drop(2, 4, True) and drop(2, 5, False)
  assert not drop(2, 5, True)


def test_brain_sampling_never_draws_empty_slices(prepared):
  _, s, cache = prepared
  table = pipeline.SliceTable.from_rows(cache, s["IXI_train_fold0"])
  probs = pipeline.slice_probabilities(table, "brain")
  np.testing.assert_allclose(probs.sum(1), 1.0)
  assert np.all(probs[table.slice_brain_voxels == 0] == 0)
  np.testing.assert_allclose(pipeline.slice_probabilities(table, "uniform"), 1 / table.num_slices)
  batch = _batches(pipeline.train_loader(table, batch_size=4, seed=0), 5)
  for b in batch:
    for v, k in zip(b["volume"], b["slice"]):
      assert table.slice_brain_voxels[v, k] > 0
  with pytest.raises(ValueError, match="unknown slice sampling"):
    pipeline.slice_probabilities(table, "random")


def test_iterator_state_resumes_exactly(prepared):
  _, s, cache = prepared
  table = pipeline.SliceTable.from_rows(cache, s["IXI_train_fold0"])
  loader = pipeline.train_loader(table, batch_size=2, seed=3, augment=augment.IntensityAugConfig())
  it = iter(loader)
  for _ in range(3):
    next(it)
  state = it.get_state()
  expected = [next(it) for _ in range(3)]
  it2 = iter(pipeline.train_loader(table, batch_size=2, seed=3,
                                   augment=augment.IntensityAugConfig()))
  it2.set_state(state)
  for e in expected:
    np.testing.assert_array_equal(next(it2)["image"], e["image"])


def test_epochs_are_reshuffled_permutations_and_resume_at_and_across_their_ends(prepared):
  """The endless training stream visits every volume once per epoch, in a new order each epoch,
  and an iterator state taken at any record (an epoch's last, its first, mid-epoch) resumes with
  the next record: nothing repeated or skipped across the epoch boundaries a run crosses."""
  _, s, cache = prepared
  table = pipeline.SliceTable.from_rows(cache, s["IXI_train_fold0"])
  n = len(table)
  kw = dict(batch_size=1, seed=4, read_threads=1, prefetch=2)
  ref = _batches(pipeline.train_loader(table, **kw), 3 * n + 1)
  order = [int(b["volume"][0]) for b in ref]
  epochs = [order[i * n:(i + 1) * n] for i in range(3)]
  assert all(sorted(e) == list(range(n)) for e in epochs)
  assert len({tuple(e) for e in epochs}) > 1
  for k in (n - 1, n, n + 1, 2 * n):
    it = iter(pipeline.train_loader(table, **kw))
    for _ in range(k):
      next(it)
    state = it.get_state()
    resumed = iter(pipeline.train_loader(table, **kw))
    resumed.set_state(state)
    for want in ref[k:]:
      got = next(resumed)
      assert (int(got["volume"][0]), int(got["slice"][0])) == (int(want["volume"][0]),
                                                             int(want["slice"][0])), k
      np.testing.assert_array_equal(got["image"], want["image"])


def test_worker_processes_give_identical_batches(prepared):
  _, s, cache = prepared
  table = pipeline.SliceTable.from_rows(cache, s["IXI_train_fold0"])
  kw = dict(batch_size=2, seed=5, augment=augment.IntensityAugConfig())
  a = _batches(pipeline.train_loader(table, **kw), 3)
  b = _batches(pipeline.train_loader(table, worker_count=1, **kw), 3)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x["image"], y["image"])


def test_validation_loader_is_fixed_and_segs_follow(prepared):
  _, s, cache = prepared
  table = pipeline.SliceTable.from_rows(cache, s["Brats21_val"])
  recs = pipeline.validation_records(table, 3)
  assert all(table.slice_brain_voxels[v, k] > 0 for v, k in recs)
  a = list(pipeline.validation_loader(table, batch_size=4, slices_per_volume=3))
  b = list(pipeline.validation_loader(table, batch_size=4, slices_per_volume=3))
  assert sum(len(x["image"]) for x in a) == len(recs)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x["image"], y["image"])
  vol = cache.load(s["Brats21_val"][0])
  first = a[0]
  k = int(first["slice"][0])
  np.testing.assert_array_equal(first["seg"][0, ..., 0], vol.seg[k])


def test_eval_volumes(prepared):
  _, s, cache = prepared
  ds = pipeline.eval_volumes(cache, s["Brats21_val"])
  item = ds[0]
  assert item["image"].shape == (8, 16, 16, 1) and item["seg"].shape == (8, 16, 16, 1)
  assert item["name"] == s["Brats21_val"][0].name and item["affine"].shape == (4, 4)
  shards = [list(pipeline.eval_volumes(cache, s["Brats21_val"], i, 2)) for i in range(2)]
  assert sorted(x["name"] for sh in shards for x in sh) == sorted(r.name for r in s["Brats21_val"])


def test_tfds_pack_and_read_without_tensorflow(prepared, tmp_path):
  _, s, cache = prepared
  from sadm_jax.data import tfds_builder
  out = tfds_builder.pack_splits(cache, {"Brats21_val": s["Brats21_val"]}, str(tmp_path / "tfds"))
  assert os.path.isdir(out["Brats21"])
  src = tfds_builder.open_split(str(tmp_path / "tfds"), "Brats21_val")
  assert len(src) == 8 * len(s["Brats21_val"])
  rec = src[3]
  assert (int(rec["volume"]), int(rec["slice"])) == (0, 3)
  vol = cache.load(s["Brats21_val"][0])
  np.testing.assert_array_equal(rec["image"], vol.image[3])
  np.testing.assert_array_equal(rec["seg"], vol.seg[3])
  import grain
  loader = grain.DataLoader(data_source=src, sampler=grain.samplers.IndexSampler(
      len(src), shuffle=True, seed=0, num_epochs=1), operations=[grain.transforms.Batch(4)])
  batch = next(iter(loader))
  assert batch["image"].shape == (4, 16, 16)
  assert "tensorflow" not in sys.modules


def test_loader_source_names_the_volumes_content_not_their_cache_paths():
  """The iterator state grain saves names the table's content: the same volumes cached elsewhere
  restore it; other volumes, another order or other labels do not."""
  from sadm_jax.data.pipeline import SliceTable, VolumeIndexSource
  voxels = np.asarray([[0, 5, 7], [1, 2, 3]])
  table = SliceTable(("/a/cache/x", "/a/cache/y"), ("x", "y"), voxels, (False, True))
  moved = SliceTable(("/b/c/x2", "/b/c/y2"), ("x", "y"), voxels.copy(), (False, True))
  assert table.fingerprint() != moved.fingerprint()  # where the entries are
  assert repr(VolumeIndexSource(table)) == repr(VolumeIndexSource(moved))
  others = [SliceTable(table.entries[::-1], ("y", "x"), voxels[::-1], (True, False)),
            SliceTable(table.entries, ("x", "z"), voxels, (False, True)),
            SliceTable(table.entries, ("x", "y"), voxels + np.eye(2, 3, dtype=int), (False, True)),
            SliceTable(table.entries, ("x", "y"), voxels, (False, False))]
  assert len({repr(VolumeIndexSource(t)) for t in [table, *others]}) == 5
  identity = pipeline.data_identity(table, others[0])
  assert identity == {"train": table.content_fingerprint(), "val": others[0].content_fingerprint(),
                      "train_names": table.names_fingerprint(),
                      "train_volumes": table.volumes_fingerprint(),
                      "val_names": others[0].names_fingerprint(),
                      "val_volumes": others[0].volumes_fingerprint()}
  # Names apart from volumes: renamed rows keep the volumes' fingerprint; another lesion (the
  # same brain mask) does not.
  import dataclasses
  renamed = dataclasses.replace(table, row_names=("x", "w"))
  assert renamed.volumes_fingerprint() == table.volumes_fingerprint()
  assert renamed.names_fingerprint() != table.names_fingerprint()
  lesion = dataclasses.replace(table, slice_lesion_voxels=np.asarray([[0, 0, 0], [0, 1, 0]]))
  assert lesion.volumes_fingerprint() != table.volumes_fingerprint()


def test_entry_directory_without_meta_is_named_with_its_repair(prepared, tmp_path):
  """An entry directory without meta.json (an interrupted copy of the cache; this code only
  ever renames complete entries into place): recomputing it failed on the rename with an OSError
  traceback ('Directory not empty'); now one DataError names the entry and its repair."""
  import shutil
  from sadm_jax.data.errors import DataError
  _, s, cache = prepared
  row = s["IXI_train_fold0"][0]
  copy = cache_lib.VolumeCache(str(tmp_path / "cache"), CFG)
  shutil.copytree(cache.path(row), copy.path(row))
  os.remove(os.path.join(copy.path(row), "meta.json"))
  assert not copy.contains(row)
  with pytest.raises(DataError, match=f"{copy.path(row)}: incomplete preprocessing cache entry "
                                      r"\(no meta\.json\); delete it"):
    copy.compute(row)
  assert not [n for n in os.listdir(copy.root) if n.startswith(".tmp-")]
  shutil.rmtree(copy.path(row))
  assert copy.compute(row)["name"] == row.name


def test_tfds_pack_refuses_to_serve_other_volumes_under_the_same_split_names(prepared, tmp_path):
  """pack_splits skipped a data set already packed with the same split NAMES: packing again after
  the preprocessing configuration (or the split's rows) changed silently returned the old
  slices. The packed content is recorded and a different one is refused."""
  from sadm_jax.data import tfds_builder
  from sadm_jax.data.errors import DataError
  _, s, cache = prepared
  out = str(tmp_path / "tfds")
  rows = s["Brats21_val"]
  tfds_builder.pack_splits(cache, {"Brats21_val": rows}, out)
  tfds_builder.pack_splits(cache, {"Brats21_val": rows}, out)  # same content: reused
  with pytest.raises(DataError, match="already packed from other volumes"):
    tfds_builder.pack_splits(cache, {"Brats21_val": rows[:1]}, out)
  other = cache_lib.VolumeCache(cache.root, PreprocessConfig(crop_size=(32, 32, 8)))
  with pytest.raises(DataError, match="already packed from other volumes"):
    tfds_builder.pack_splits(other, {"Brats21_val": rows}, out)


def test_eval_volumes_name_the_rows_asked_for_not_the_cache_entry(prepared):
  """A cache entry is keyed by its files, and its meta keeps the name of the row that computed it:
  the same files listed under another img_name (renamed in the CSV) were named the old way."""
  import dataclasses
  _, s, cache = prepared
  row = dataclasses.replace(s["Brats21_val"][0], name="renamed")
  assert cache.contains(row)
  assert pipeline.eval_volumes(cache, [row])[0]["name"] == "renamed"
