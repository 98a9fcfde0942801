"""benchmarks/channel_reductions.py: both variants timed, the package default restored."""

import json

from benchmarks import channel_reductions
from sadm_jax.models import staged


def test_ops_table_for_both_variants(tmp_path):
  default = staged.MIN_INNER_BLOCK
  out = tmp_path / "r.json"
  r = channel_reductions.main(["--steps", "", "--rounds", "1", "--subprocess", "0",
                               "--out", str(out)])
  assert staged.MIN_INNER_BLOCK == default
  assert set(r["table"]) == set(channel_reductions.OPS)
  for row in r["table"].values():
    assert row["plain"] > 0 and row["staged"] > 0 and row["unit"] == "ms"
    assert max(row["rel_error"].values()) < 1e-4
  assert json.loads(out.read_text())["table"].keys() == r["table"].keys()


def test_plain_variant_takes_the_one_step_form():
  """What the benchmark's 'plain' variant measures: one reduction, no [N·H, W·C] view."""
  import jax
  import jax.numpy as jnp
  default = staged.MIN_INNER_BLOCK

  def sums(variant):
    channel_reductions._set_variant(variant, default)
    try:
      jaxpr = jax.make_jaxpr(lambda x: staged.staged_sum(x, (0, 1, 2)))(jnp.zeros((8, 32, 32, 16)))
    finally:
      channel_reductions._set_variant("staged", default)
    return [e for e in jaxpr.eqns if e.primitive.name == "reduce_sum"]

  assert len(sums("plain")) == 1 and len(sums("staged")) == 2
  assert staged.MIN_INNER_BLOCK == default
