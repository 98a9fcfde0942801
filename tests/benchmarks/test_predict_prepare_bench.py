"""benchmarks/predict_prepare.py: each scan prepared once per timing, sequentially and by predict's pipeline, JSON written."""

import contextlib
import json
import os
import types

import numpy as np

import pytest

from benchmarks import predict_prepare
from sadm_jax.evaluate import predict, predictor


def test_every_scan_is_prepared_in_every_way(tmp_path, monkeypatch):
  calls = []
  monkeypatch.setattr(predictor, "load_predictor", lambda *a: "pred")
  monkeypatch.setattr(predict, "prepare", lambda pred, image, mask: calls.append((pred, image, mask)))

  writes = []

  class PerScan:  # predict's worker processes (or this thread), recorded instead
    def __init__(self, label):
      self.label = label

    def __call__(self, image, mask):
      calls.append((self.label, image, mask))
      return types.SimpleNamespace(work=types.SimpleNamespace(image=np.zeros((2, 3, 4))))

    def finish(self, prep, a, out_dir, name):
      assert a.shape == (2, 3, 4) and name == "scan"
      return lambda: writes.append((self.label, os.path.basename(out_dir)))

  @contextlib.contextmanager
  def preparer(pred, workers):
    yield PerScan(f"{pred} in {workers} processes")

  monkeypatch.setattr(predict, "preparer", preparer)
  out = tmp_path / "r.json"
  entry = predict_prepare.main([f"--checkpoint_dir={tmp_path}", "--scans=a,b,c", "--masks=x,y,z",
                                "--threads=2", "--repeats=2", f"--out={out}"])
  in_thread = [c for c in calls if c[0] == "pred"]
  in_pool = [c for c in calls if c[0] == "pred in 2 processes"]
  assert len(in_thread) == 1 + 2 * 3 * 3 and len(in_pool) == 1 + 2 * 3
  assert {c[1:] for c in in_thread} == {c[1:] for c in in_pool} == {("a", "x"), ("b", "y"),
                                                                    ("c", "z")}
  assert sorted(c[1:] for c in calls if c[0] == "pred in 1 processes") == [
      ("a", "x"), ("b", "y"), ("c", "z")]  # prepared once for the writing
  assert sorted(writes) == sorted([(f"pred in {n} processes", str(k)) for n in (1, 2)
                                   for k in range(3)] * 2)  # every scan written, 2 ways, twice
  assert set(entry["table"]) == {"sequential", "2 threads, 1 scan per batch", "2 threads, 1 batch",
                                 "2 processes, 1 scan per batch", "writing outputs, sequential",
                                 "writing outputs, 2 processes"}
  assert json.loads(out.read_text())["threads"] == 2
  with pytest.raises(SystemExit, match="2 masks for 3 scans"):
    predict_prepare.main([f"--checkpoint_dir={tmp_path}", "--scans=a,b,c", "--masks=x,y"])
