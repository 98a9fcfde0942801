"""Ahead-of-time compile check: tiny cDDPM on 8 CPU devices without allocating its state; FSDP shrinks per-device arguments."""

import json
import math

import jax
import optax
import pytest

from configs import cddpm as cddpm_config
from sadm_jax import main as main_lib
from sadm_jax.train import aot, sharding
from tests.train import test_loop


def _live_bytes() -> int:
  return sum(a.nbytes for a in jax.live_arrays())


def test_tiny_cddpm_aot_reports_memory_and_flops_without_allocating(tmp_path, capsys):
  c = cddpm_config.get_config("tiny")
  c.optimizer.learning_rate = 2e-3  # the session's tiny cDDPM runs' program (shared compile cache)
  c.stage = "aot"
  before = _live_bytes()
  result = main_lib.run_stage(c, str(tmp_path))
  # The state (4.4 MB: parameters + 2 Adam moments) was never materialised; what is live is
  # small constants (the diffusion schedule's 1000-entry tables, PRNG keys).
  assert _live_bytes() - before < 100_000
  with open(tmp_path / "aot.json") as f:
    on_disk = json.load(f)
  assert on_disk == json.loads(json.dumps(result))
  assert on_disk["task"] == "cddpm" and on_disk["mesh"] == {"data": 8}
  assert on_disk["num_devices"] == 8 and on_disk["global_batch"] == 8
  mem = on_disk["memory_per_device"]
  state_bytes = 3 * 4 * on_disk["params"]  # float32 parameters + Adam mu + nu, replicated
  assert state_bytes <= mem["argument_bytes"] < 1.1 * state_bytes
  assert mem["alias_bytes"] >= state_bytes  # the donated state is updated in place
  assert mem["temp_bytes"] > 0
  assert mem["total_bytes"] == (mem["argument_bytes"] + mem["output_bytes"] - mem["alias_bytes"]
                                + mem["temp_bytes"] + mem["generated_code_bytes"])
  assert on_disk["flops_per_device"] > 1e8
  assert on_disk["flops_total"] == pytest.approx(8 * on_disk["flops_per_device"])
  out = capsys.readouterr().out
  assert "AOT train step: task cddpm" in out and "temporaries" in out and "FLOPs per step" in out
  assert on_disk["heap_limit_bytes"] is None and "heaps <=" not in out  # the suite: one heap


def test_a_batch_too_large_to_index_is_one_line_exit_2(tmp_path, capsys):
  """A batch no device could hold fails while tracing (an int32 index overflows): one line."""
  c = cddpm_config.get_config("tiny")
  c.stage = "aot"
  c.train.batch_size = 100_000_000
  assert main_lib.run_checked(c, str(tmp_path)) == 2
  err = capsys.readouterr().err
  assert err.startswith("error: --config.train.batch_size=100000000: the train step's arrays at "
                        "this batch size and these model widths are too large") and \
      err.count("\n") == 1
  assert not (tmp_path / "aot.json").exists()


def test_the_table_names_the_cpu_heap_limit_the_train_loop_compiles_with():
  """On CPU the train step's temporaries may come in heaps of <= 60 MiB (xla_flags.HEAP_FLAG,
  `loop.Trainer.fit_heap_split`): the table says so next to the number."""
  r = {"task": "cddpm", "params": 1, "mesh": {"data": 1}, "device_kind": "cpu",
       "num_processes": 1, "fsdp": False, "global_batch": 32, "compile_seconds": 1.0,
       "memory_per_device": {"temp_bytes": 54.2 * 2 ** 30}, "flops_per_device": 1e12,
       "flops_total": 1e12, "heap_limit_bytes": 60 * 2 ** 20}
  text = aot.format_table(r)
  assert "temporaries (heaps <= 60 MiB)" in text and "54.200 GiB" in text
  r["heap_limit_bytes"] = None
  assert "heaps" not in aot.format_table(r)


def test_fsdp_shards_the_state_per_device():
  args = {}
  for fsdp in (False, True):
    config = test_loop._config(8, fsdp=fsdp)
    task = test_loop.toy_task(config, tx=optax.sgd(0.1))
    trainer, compiled, _ = aot.compile_train_step(config, task, sharding.make_mesh(config))
    args[fsdp] = aot.analyse(compiled)["memory_per_device"]["argument_bytes"]
    assert trainer.state_shardings.params["Conv_0"]["kernel"].spec == (
        jax.sharding.PartitionSpec(None, None, None, "data") if fsdp else jax.sharding.PartitionSpec())
  assert args[True] < args[False]


def test_unknown_model_names_are_an_error():
  c = cddpm_config.get_config("tiny")
  c.model.names = ("segnet_only",)
  with pytest.raises(ValueError, match=r"no AOT task for model.names=\('segnet_only',\)"):
    aot.build_task(c)


def test_stage_two_task_builds_abstractly_without_a_cddpm_checkpoint():
  from configs import sadm_draem
  c = sadm_draem.get_config("tiny")
  task = aot.build_task(c)
  trainer = aot.loop.Trainer(c, task, sharding.make_mesh(c))  # shapes and shardings only
  state, batch = aot.abstract_inputs(trainer)
  assert task.name == "sadm" and sorted(batch) == ["image", "seg"]
  assert batch["image"].shape == (8, 64, 64, 1)
  assert state.model_state == {}  # the frozen cDDPM is a step argument, not part of the state
  assert set(trainer.frozen) == {"params", "batch_stats"}


def test_analysis_the_backend_does_not_report_is_nan_and_empty():
  class Silent:  # a backend without cost or memory analysis
    def cost_analysis(self):
      raise NotImplementedError

    def memory_analysis(self):
      return None

  out = aot.analyse(Silent())
  assert out["memory_per_device"] == {}
  assert math.isnan(out["flops_per_device"]) and math.isnan(out["bytes_accessed_per_device"])
