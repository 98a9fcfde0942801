"""benchmarks/transposed_conv.py: both variants timed and checked against float64, default restored."""

import json

from benchmarks import transposed_conv
from sadm_jax.models import layers


def test_ops_table_for_both_variants(tmp_path, monkeypatch):
  ops = {k: v for k, v in transposed_conv.OPS.items()
         if k.startswith(("SegUnet up-conv, demo [16, 8", "SparK up-conv, paper [4, 6"))}
  assert len(ops) == 2  # one SegUnet (2×2, VALID) and one SparK (4×4, transposed kernel) case
  monkeypatch.setattr(transposed_conv, "OPS", ops)
  out = tmp_path / "r.json"
  r = transposed_conv.main(["--steps", "", "--rounds", "1", "--subprocess", "0", "--calls", "1",
                            "--out", str(out)])
  assert layers.ADJOINT_BACKENDS == ("cpu",)
  assert set(r["table"]) == set(ops)
  for row in r["table"].values():
    assert row["plain"] > 0 and row["adjoint"] > 0 and row["unit"] == "ms"
    assert max(row["rel_error"].values()) < 1e-5
  assert json.loads(out.read_text())["table"].keys() == r["table"].keys()
