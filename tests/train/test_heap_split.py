"""The CPU heap split of the train steps is kept only while no value is larger than a heap (loop.Trainer.fit_heap_split)."""

import jax
import jax.numpy as jnp

from configs import cddpm as cddpm_config
from sadm_jax.train import aot, loop, sharding
from sadm_jax.utils import cost, host_heap, xla_flags


def test_largest_value_bytes_sees_nested_programs():
  inner = jax.jit(lambda x: jnp.outer(x, x))  # f32[64, 64]: 16 KiB, inside a nested jaxpr
  jaxpr = jax.make_jaxpr(lambda x: inner(x).sum() + x.sum())(jnp.zeros(64, jnp.float32))
  assert cost.largest_value_bytes(jaxpr) == 64 * 64 * 4


def _trainer(monkeypatch, options):
  monkeypatch.setenv(host_heap.ENV_SWITCH, "1")  # the suite turns the split off (conftest)
  if options is not None:
    monkeypatch.setattr(xla_flags, "train_compiler_options", lambda platform: options)
  config = cddpm_config.get_config("tiny")
  return loop.Trainer(config, aot.build_task(config), sharding.make_mesh(config))


def test_the_split_is_kept_for_small_values_and_dropped_for_larger_ones(monkeypatch):
  """The tiny cDDPM step's values are far below 60 MiB: split kept. With heaps of 1 KiB its
  values are larger: both steps are rebuilt with one heap (the paper cDDPM step at batch 32 had
  54.2 GiB of temporaries split, 18.8 GiB in one heap)."""
  trainer = _trainer(monkeypatch, None)
  assert trainer.step_compiler_options == {xla_flags.HEAP_FLAG: xla_flags.CPU_HEAP_BYTES}
  state, batch = aot.abstract_inputs(trainer)
  step = trainer.train_step
  assert trainer.fit_heap_split(state, batch) is True
  assert trainer.train_step is step and trainer.step_compiler_options
  trainer = _trainer(monkeypatch, {xla_flags.HEAP_FLAG: 1024})
  state, batch = aot.abstract_inputs(trainer)
  step, eval_step = trainer.train_step, trainer.eval_step
  assert trainer.fit_heap_split(state, batch) is False
  assert trainer.step_compiler_options is None
  assert trainer.train_step is not step and trainer.eval_step is not eval_step
  assert trainer.fit_heap_split(state, batch) is False  # nothing left to decide
