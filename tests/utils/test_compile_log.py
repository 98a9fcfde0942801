"""SADM_COMPILE_LOG: one JSON line per trace / lower / compile, summed by benchmarks.compile_profile."""

import json

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import compile_profile
from sadm_jax.utils import compile_log


def test_a_compilation_is_logged_with_its_program_and_test_and_summarised(tmp_path):
  path = str(tmp_path / "compile.jsonl")
  assert compile_log.install(path) == path
  assert compile_log.install(path) == path  # idempotent: one listener per file
  try:
    jax.jit(lambda x: jnp.sin(x) * 3.0 + 1.25)(np.arange(7.0, dtype=np.float32))  # a shape no other test uses
  finally:
    compile_log.uninstall(path)
  jax.jit(lambda x: x - 2.5)(np.arange(5.0, dtype=np.float32))  # after uninstall: not logged
  with open(path) as f:
    rows = [json.loads(l) for l in f]
  compiles = [r for r in rows if r["event"] == "compile"]
  assert len(compiles) == 1 and compiles[0]["fun"] == "jit(<lambda>)" and compiles[0]["s"] > 0
  assert compiles[0]["test"].endswith("test_a_compilation_is_logged_with_its_program_and_test_"
                                      "and_summarised")
  assert {r["event"] for r in rows} >= {"trace", "lower", "compile"}
  s = compile_profile.summarise(compile_profile.read(path))
  assert s["totals"]["compile"]["count"] == 1
  assert s["programs"] == [{"fun": "jit(<lambda>)", "count": 1, "s": compiles[0]["s"]}]
  assert s["tests"][0]["compile"] == compiles[0]["s"]


def test_off_without_the_variable(monkeypatch):
  monkeypatch.delenv(compile_log.ENV, raising=False)
  assert compile_log.install() is None
