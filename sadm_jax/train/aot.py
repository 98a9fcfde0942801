"""`stage=aot`: compile the configured task's train step for the configured mesh without running it; report memory and FLOPs.

    python -m sadm_jax.main --config=configs/cddpm.py --workdir=W --config.stage=aot
    XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m sadm_jax.main \
        --config=configs/cddpm.py:tiny --workdir=W --config.stage=aot --config.mesh.fsdp=True

The state and the batch stay abstract (shapes, dtypes, shardings): nothing is allocated and no
data is read, so a configuration can be checked for its per-device memory before a run.
Numbers come from XLA's analysis of the compiled per-device program on the backend that
compiled it (CPU numbers show the sharding and the buffer sizes, not a GPU's kernels).
"""

from __future__ import annotations

import importlib
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from sadm_jax import config as config_lib
from sadm_jax.models import factory
from sadm_jax.train import loop, sharding as shard_lib
from sadm_jax.utils import cost, io, xla_flags

# model.names of a config -> "module:function(config, data=False) -> loop.Task"; a training stage
# whose task should be AOT-checkable adds its line here.
TASKS = {
    ("encoder", "unet"): "sadm_jax.train.cddpm:cddpm_task",
    ("spark",): "sadm_jax.train.spark:spark_task",
    ("encoder", "unet", "segnet"): "sadm_jax.train.sadm:sadm_task",
}


def build_task(config: ml_collections.ConfigDict) -> loop.Task:
  """The training task that `config.model.names` describes, without data loaders."""
  names = tuple(config.model.names)
  if names not in TASKS:
    known = "; ".join(map(str, TASKS))
    raise ValueError(f"no AOT task for model.names={names}; known: {known}")
  module, fn = TASKS[names].split(":")
  return getattr(importlib.import_module(module), fn)(config, data=False)


def abstract_inputs(trainer: loop.Trainer) -> tuple[Any, dict]:
  """(state, batch) as ShapeDtypeStructs carrying the Trainer's shardings; batch fields [B, H, W, 1]."""
  state = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                       trainer.abstract_state, trainer.state_shardings)
  res = factory.slice_size(trainer.config)
  batch_sh = shard_lib.batch_sharding(trainer.mesh)
  shape = (int(trainer.config.train.batch_size), res, res, 1)
  batch = {k: jax.ShapeDtypeStruct(shape, jnp.float32, sharding=batch_sh)
           for k in trainer.task.batch_keys}
  return state, batch


def compile_train_step(config: ml_collections.ConfigDict, task: loop.Task | None = None,
                       mesh: jax.sharding.Mesh | None = None):
  """(trainer, compiled train step, compile seconds) for the config's task at the config's mesh."""
  task = task or build_task(config)
  mesh = mesh or shard_lib.make_mesh(config)
  shard_lib.local_batch_size(config.train.batch_size, mesh)  # the loop's divisibility check
  trainer = loop.Trainer(config, task, mesh)
  state, batch = abstract_inputs(trainer)
  try:
    trainer.fit_heap_split(state, batch)  # as the train loop compiles it
    t0 = time.perf_counter()
    compiled = trainer.train_step.lower(state, batch, trainer.train_key, trainer.frozen).compile()
  except OverflowError as e:  # a batch no device could hold, e.g. train.batch_size=1e8
    raise ValueError(f"--config.train.batch_size={config.train.batch_size}: the train step's "
                     "arrays at this batch size and these model widths are too large to index "
                     f"with JAX's 32-bit integers ({e})") from None
  return trainer, compiled, time.perf_counter() - t0


def analyse(compiled) -> dict:
  """Per-device memory (bytes, `cost.compiled_cost`) and cost of a compiled program (NaN: none)."""
  c = cost.compiled_cost(compiled)
  nan = float("nan")
  return {"memory_per_device": c["memory"],
          "flops_per_device": nan if c["flops"] is None else c["flops"],
          "bytes_accessed_per_device": nan if c["bytes_accessed"] is None else c["bytes_accessed"]}


def report(config: ml_collections.ConfigDict, trainer: loop.Trainer, compiled,
           seconds: float) -> dict:
  mesh = trainer.mesh
  n = int(mesh.devices.size)
  device = mesh.devices.flat[0]
  out = {"task": trainer.task.name, "platform": device.platform, "device_kind": device.device_kind,
         "num_devices": n, "num_processes": jax.process_count(),
         "mesh": {k: int(v) for k, v in mesh.shape.items()}, "fsdp": bool(config.mesh.fsdp),
         "global_batch": int(config.train.batch_size), "compile_seconds": round(seconds, 2),
         "params": int(sum(x.size for x in jax.tree.leaves(trainer.abstract_state.params))),
         # CPU: temporaries in heaps of at most this many bytes (`xla_flags.train_compiler_options`,
         # kept by `Trainer.fit_heap_split` while no value is larger); None: one heap
         "heap_limit_bytes": (trainer.step_compiler_options or {}).get(xla_flags.HEAP_FLAG),
         **analyse(compiled)}
  out["flops_total"] = out["flops_per_device"] * n
  return out


def _si(x: float, unit: str) -> str:
  for scale, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M")):
    if abs(x) >= scale:
      return f"{x / scale:.3f} {prefix}{unit}"
  return f"{x:.0f} {unit}"


def format_table(r: dict) -> str:
  mesh = " × ".join(f"{k}={v}" for k, v in r["mesh"].items())
  lines = [f"AOT train step: task {r['task']}, {r['params']:,} parameters, mesh {mesh} "
           f"({r['device_kind']}), {r['num_processes']} process(es), fsdp={r['fsdp']}, "
           f"global batch {r['global_batch']}, compiled in {r['compile_seconds']:.1f} s",
           "per device:"]
  labels = {"argument_bytes": "arguments (state + batch)", "output_bytes": "outputs",
            "alias_bytes": "aliased (donated state)", "temp_bytes": "temporaries",
            "generated_code_bytes": "generated code",
            "total_bytes": "total (args + out - alias + temp + code)"}
  if r.get("heap_limit_bytes"):  # how the CPU train loop compiles it (SADM_CPU_HEAP_REUSE)
    labels["temp_bytes"] = f"temporaries (heaps <= {r['heap_limit_bytes'] / 2 ** 20:.0f} MiB)"
  for key, label in labels.items():
    if key in r["memory_per_device"]:
      lines.append(f"  {label:<42}{r['memory_per_device'][key] / 2 ** 30:10.3f} GiB")
  lines.append(f"  {'FLOPs per step':<42}{_si(r['flops_per_device'], 'FLOP'):>14}"
               f"   (all devices: {_si(r['flops_total'], 'FLOP')})")
  return "\n".join(lines)


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Compiles, prints the table and writes `workdir/aot.json` (process 0)."""
  config = config_lib.resolve(config)
  trainer, compiled, seconds = compile_train_step(config)
  result = report(config, trainer, compiled, seconds)
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    io.write_json(os.path.join(workdir, "aot.json"), result)
    print(format_table(result), flush=True)
  return result
