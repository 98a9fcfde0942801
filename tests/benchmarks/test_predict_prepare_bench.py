"""benchmarks/predict_prepare.py: each scan prepared once per timing, sequentially and by predict's pipeline, JSON written."""

import json

import pytest

from benchmarks import predict_prepare
from sadm_jax.evaluate import predict, predictor


def test_every_scan_is_prepared_in_every_way(tmp_path, monkeypatch):
  calls = []
  monkeypatch.setattr(predictor, "load_predictor", lambda *a: "pred")
  monkeypatch.setattr(predict, "prepare", lambda pred, image, mask: calls.append((pred, image, mask)))
  out = tmp_path / "r.json"
  entry = predict_prepare.main([f"--checkpoint_dir={tmp_path}", "--scans=a,b,c", "--masks=x,y,z",
                                "--threads=2", "--repeats=2", f"--out={out}"])
  assert len(calls) == 1 + 2 * 3 * 3 and set(calls) == {("pred", "a", "x"), ("pred", "b", "y"),
                                                        ("pred", "c", "z")}
  assert set(entry["table"]) == {"sequential", "2 threads, 1 scan per batch", "2 threads, 1 batch"}
  assert json.loads(out.read_text())["threads"] == 2
  with pytest.raises(SystemExit, match="2 masks for 3 scans"):
    predict_prepare.main([f"--checkpoint_dir={tmp_path}", "--scans=a,b,c", "--masks=x,y"])
