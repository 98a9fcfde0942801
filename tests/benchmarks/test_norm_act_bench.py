"""benchmarks/norm_act.py: both variants timed against float64, default restored; ab.variant_worker."""

import json
import types

import jax
import pytest

from benchmarks import ab, norm_act
from sadm_jax.models import norm_act as package_norm_act


def test_ops_table_for_both_variants(tmp_path, monkeypatch):
  default = package_norm_act.RECOMPUTE_BACKENDS
  small = {"GN+SiLU [2, 8, 8, 16], 4 groups": ((2, 8, 8, 16), 4, False),
           "GN+FiLM+SiLU [2, 8, 8, 16], 4 groups": ((2, 8, 8, 16), 4, True)}
  monkeypatch.setattr(norm_act, "OPS", small)
  out = tmp_path / "r.json"
  r = norm_act.main(["--steps", "", "--rounds", "1", "--subprocess", "0", "--calls", "1",
                     "--out", str(out)])
  assert package_norm_act.RECOMPUTE_BACKENDS == default
  assert set(r["table"]) == set(small)
  for row in r["table"].values():
    assert row["plain"] > 0 and row["recompute"] > 0 and row["unit"] == "ms"
    assert max(row["rel_error"].values()) < 1e-5  # against a float64 computation
  assert json.loads(out.read_text())["table"].keys() == r["table"].keys()


def test_variants_switch_the_recomputing_vjp():
  default = package_norm_act.RECOMPUTE_BACKENDS
  try:
    norm_act._set_variant("recompute")
    assert package_norm_act.RECOMPUTE_BACKENDS == (jax.default_backend(),)
    norm_act._set_variant("plain")
    assert package_norm_act.RECOMPUTE_BACKENDS == ()
  finally:
    package_norm_act.RECOMPUTE_BACKENDS = default


def test_variant_worker_switches_before_ops_and_steps_and_restores_on_error():
  setting = types.SimpleNamespace(value="a")
  calls = []

  def switch(v):
    calls.append(("switch", v))
    setting.value = v

  out = ab.variant_worker("b", switch, (setting, "value"),
                          {"op": lambda: calls.append(("op", setting.value)) or {"ms": 1.0}}, [], 1)
  assert out == {"ops": {"op": {"ms": 1.0}}, "steps": {}}
  assert calls == [("switch", "b"), ("op", "b"), ("switch", "b")]
  assert setting.value == "a"  # restored

  calls.clear()

  def fails():
    raise RuntimeError("op failed")

  with pytest.raises(RuntimeError, match="op failed"):
    ab.variant_worker("b", switch, (setting, "value"), {"op": fails}, [], 1)
  assert calls == [("switch", "b")]
  assert setting.value == "a"  # restored after the error too
