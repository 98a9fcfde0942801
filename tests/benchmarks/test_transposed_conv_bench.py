"""benchmarks/transposed_conv.py: both variants timed, checked against float64, default restored."""

import json

import jax.numpy as jnp
import numpy as np

from benchmarks import transposed_conv
from sadm_jax.models import layers
from tests.helpers import dilated_convs


def test_ops_table_for_both_variants(tmp_path, monkeypatch):
  default = layers.ADJOINT_BACKENDS
  ops = {k: v for k, v in transposed_conv.OPS.items()
         if k.startswith(("SegUnet up-conv, demo [16, 8", "SparK up-conv, paper [4, 6"))}
  assert len(ops) == 2  # one SegUnet (2×2, VALID) and one SparK (4×4, transposed kernel) case
  monkeypatch.setattr(transposed_conv, "OPS", ops)
  out = tmp_path / "r.json"
  r = transposed_conv.main(["--steps", "", "--rounds", "1", "--subprocess", "0", "--calls", "1",
                            "--out", str(out)])
  assert layers.ADJOINT_BACKENDS is default
  assert set(r["table"]) == set(ops)
  for row in r["table"].values():
    assert row["plain"] > 0 and row["adjoint"] > 0 and row["unit"] == "ms"
    assert max(row["rel_error"].values()) < 1e-5
  assert json.loads(out.read_text())["table"].keys() == r["table"].keys()


def test_variants_differentiate_differently():
  """'plain': the kernel gradient as a conv over the dilated input; 'adjoint': it is not."""
  default = layers.ADJOINT_BACKENDS
  m = layers.ConvTranspose(4, **transposed_conv.SEGUNET)
  x = jnp.asarray(np.ones((1, 4, 4, 3)), jnp.float32)
  params = {"params": {"kernel": jnp.ones((2, 2, 3, 4)), "bias": jnp.zeros(4)}}
  counts = {}
  try:
    for variant in transposed_conv.VARIANTS:
      transposed_conv._set_variant(variant, default)
      counts[variant] = dilated_convs(m, params, x)
  finally:
    layers.ADJOINT_BACKENDS = default
  assert counts == {"plain": 2, "adjoint": 1}
