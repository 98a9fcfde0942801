"""Predict's scan preparation in worker processes: what the caller's thread prepares, and a worker that dies fails only the scan it held."""

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
from sadm_jax.evaluate import predict, predictor
from tests.evaluate.test_predict_devices import _copies


def _predictor() -> predictor.Predictor:
  """The threshold baseline's predictor: preparation needs no model."""
  c = config_lib.resolve(predict_config.get_config())
  return predictor.Predictor(settings_config=c, method="threshold", combination="residual",
                             source="test")


def _same(a: predict.Prepared, b: predict.Prepared) -> None:
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
    _same(prepare_one(*paths[0]), predict.prepare(pred, *paths[0]))
