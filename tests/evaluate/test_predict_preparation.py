"""Predict's scan preparation and output writing in worker processes: what the caller's thread prepares and writes, and a worker that dies fails the scans its pool held, not later ones."""

from __future__ import annotations

import os
import signal
import time
from concurrent import futures

import numpy as np
import psutil
import pytest

from configs import predict as predict_config
from sadm_jax import config as config_lib
from sadm_jax.data.errors import DataError
from sadm_jax.evaluate import predict, predictor, preparation
from tests.evaluate.test_predict_devices import _copies


def _predictor() -> predictor.Predictor:
  """The threshold baseline's predictor: preparation needs no model."""
  c = config_lib.resolve(predict_config.get_config())
  return predictor.Predictor(settings_config=c, method="threshold", combination="residual",
                             source="test")


def _same(a: preparation.Prepared, b: preparation.Prepared) -> None:
  for field in ("image_path", "mask_path", "input_shape", "shape_t", "index"):
    assert getattr(a, field) == getattr(b, field), field
  assert (a.reo.source, a.reo.target, a.reo.input_shape) == (b.reo.source, b.reo.target,
                                                             b.reo.input_shape)
  for x, y in ((a.reo.affine, b.reo.affine), (a.input_affine, b.input_affine), (a.brain_t, b.brain_t), (a.brain, b.brain),
               (a.work.image, b.work.image), (a.work.mask, b.work.mask),
               (a.work.affine, b.work.affine)):
    np.testing.assert_array_equal(x, y)


def test_scans_prepared_in_worker_processes_equal_those_prepared_here(scan, tmp_path):
  pred = _predictor()
  paths = _copies(scan, tmp_path / "scans", 2)
  with predict.preparer(pred, 1) as here, predict.preparer(pred, 2) as in_pool:
    for image, mask in paths:
      _same(here(image, mask), in_pool(image, mask))
    bad = tmp_path / "sub-09_T1w.nii.gz"
    bad.write_bytes(b"not a NIfTI file")
    with pytest.raises(DataError, match="sub-09_T1w.nii.gz"):  # its message crosses over
      in_pool(str(bad), None)


def test_outputs_written_in_worker_processes_equal_those_written_here(scan, tmp_path):
  """A host feeding several GPUs wrote every scan's outputs in its main thread (1.4 s for a
  160×200×164 scan, GIL-bound): with worker processes the writing runs there, byte for byte the
  same files and the same record; an error in a worker crosses over with its message."""
  import dataclasses
  import json

  import nibabel as nib
  pred = dataclasses.replace(_predictor(), tau=0.25, tau_source="test τ")
  (image, mask), = _copies(scan, tmp_path / "scans", 1)
  with predict.preparer(pred, 1) as here, predict.preparer(pred, 2) as in_pool:
    prep = here(image, mask)
    a = np.random.default_rng(0).uniform(0, 0.5, prep.work.image.shape).astype(np.float32)
    records = {}
    for how, per_scan in (("here", here), ("pool", in_pool)):
      records[how] = per_scan.finish(prep, a, str(tmp_path / how), "s")()
    bad = np.full_like(a, np.nan)
    with pytest.raises(ValueError, match="anomaly scores contain"):  # the worker's error, here
      in_pool.finish(prep, bad, str(tmp_path / "bad"), "s")()
  assert records["pool"] == json.loads((tmp_path / "pool" / "s_prediction.json").read_text())
  assert records["pool"]["flagged_voxels_input_grid"] > 0
  for name in ("s_anomaly_map.nii.gz", "s_anomaly_mask.nii.gz"):
    ours, theirs = (nib.load(str(tmp_path / how / name)) for how in ("here", "pool"))
    np.testing.assert_array_equal(ours.get_fdata(), theirs.get_fdata())
  strip = lambda r: {k: v for k, v in r.items() if k not in ("anomaly_map", "anomaly_mask")}
  assert strip(records["here"]) == strip(records["pool"])


def _pool_workers(since: float) -> list[psutil.Process]:
  """This process's spawned pool workers started after `since` (not the suite's other children:
  its background CLI runs)."""
  return [p for p in psutil.Process().children()
          if p.create_time() >= since - 1 and "spawn_main" in " ".join(p.cmdline())]


def test_a_worker_that_dies_fails_the_scan_it_held_and_a_new_pool_prepares_the_next(
    scan, tmp_path):
  """As when the kernel's OOM killer ends a worker: the scan a worker holds is failed, named, once
  its workers are killed (here as soon as they exist, while they start: before any can answer for
  it — the FIFO would be refused at once, 'not a regular file'); the next scan is prepared by a
  new pool, as in the caller's thread."""
  pred = _predictor()
  paths = _copies(scan, tmp_path / "scans", 1)
  stuck = tmp_path / "sub-05_T1w.nii.gz"
  os.mkfifo(stuck)
  t0 = time.time()
  with predict.preparer(pred, 2) as prepare_one, futures.ThreadPoolExecutor(1) as thread:
    held = thread.submit(prepare_one, str(stuck), None)
    deadline = time.time() + 60
    while not (workers := _pool_workers(t0)) and time.time() < deadline:
      time.sleep(0.05)
    assert workers
    for p in workers:
      p.send_signal(signal.SIGKILL)
    with pytest.raises(DataError, match=r"sub-05_T1w.nii.gz: the worker process preparing it "
                                        r"died \(out of memory\?\)"):
      held.result(timeout=60)
    t1 = time.time()
    prep = prepare_one(*paths[0])
    _same(prep, predict.prepare(pred, *paths[0]))
    for p in _pool_workers(t1):  # the new pool's workers die too: the outputs are not written
      p.send_signal(signal.SIGKILL)
    a = np.zeros(prep.work.image.shape, np.float32)
    with pytest.raises(DataError, match=r"sub-01_T1w.nii.gz: the worker process writing the "
                                        r"outputs of it died \(out of memory\?\)"):
      prepare_one.finish(prep, a, str(tmp_path / "out"), "sub-01_T1w")()
    assert not os.path.exists(tmp_path / "out" / "sub-01_T1w_prediction.json")
    prepare_one.finish(prep, a, str(tmp_path / "out"), "sub-01_T1w")()  # a third pool
    assert os.path.exists(tmp_path / "out" / "sub-01_T1w_prediction.json")


def test_a_scan_given_to_a_pool_that_broke_before_goes_to_a_new_one(scan, tmp_path):
  """A pool whose worker died (another scan's) refuses new work at once: a scan handed to it
  before any thread had renewed it failed, 'the worker process preparing it died', though no
  worker ever held it; it goes to a new pool now, prepared and written as any other."""
  pred = _predictor()
  (image, mask), = _copies(scan, tmp_path / "scans", 1)
  with predict.preparer(pred, 2) as in_pool:
    for job in ("prepare", "finish"):
      broken, t0 = in_pool.pools[-1], time.time()
      broken.submit(os.getpid).result(timeout=60)  # its workers started
      for p in list(broken._processes.values()):
        os.kill(p.pid, signal.SIGKILL)
      while not broken._broken and time.time() < t0 + 60:  # noticed by the pool, by no thread
        time.sleep(0.05)
      if job == "prepare":
        prep = in_pool(image, mask)
        _same(prep, predict.prepare(pred, image, mask))
      else:
        a = np.zeros(prep.work.image.shape, np.float32)
        assert in_pool.finish(prep, a, str(tmp_path / "out"), "s")()["volume_score"] == 0
      assert in_pool.pools[-1] is not broken
