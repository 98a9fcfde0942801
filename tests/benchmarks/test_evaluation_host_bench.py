"""benchmarks/evaluation_host.py: each way runs every volume's host work, the records agree, JSON written."""

import json

import numpy as np

from benchmarks import evaluation_host


def test_both_ways_compute_the_same_records_and_the_table_is_written(tmp_path):
  out = tmp_path / "r.json"
  entry = evaluation_host.main(["--grid=8,16,16", "--volumes=3", "--threads=2", "--repeats=1",
                                f"--out={out}"])
  assert set(entry["table"]) == {"one after the other", "2 threads",
                                 "DRAEM loading, one after the other", "DRAEM loading, 2 threads",
                                 "DRAEM loading, 2 processes"}
  assert json.loads(out.read_text())["grid"] == [8, 16, 16]
  vols = evaluation_host.stand_in_volumes((8, 16, 16), 2)
  assert vols[0]["gt"].any() and not (vols[0]["gt"] & ~vols[0]["mask"]).any()
  from sadm_jax.evaluate.store import Store
  store = Store(str(tmp_path / "w"))
  a, b = (evaluation_host.finish_volume(v, str(tmp_path / "o"), store) for v in vols[:1] * 2)
  assert a == b and 0 < a["dice"] <= 1 and np.isfinite(a["auprc"])
