"""One process of a multi-process toy training run on CPU (launched by tests/train/test_distributed.py).

    python -m tests.train.distributed_driver --coordinator=127.0.0.1:PORT --num_processes=2 \
        --process_id=I --devices=4 --out=DIR --runs=dp:2,dp:3,fsdp:3,stop:4:3:1,stop:4

Each run `kind:steps` trains the toy task with `loop.train` in DIR/<kind> (a later run of the same
kind resumes from its checkpoint); `kind:steps:S:P`: process P sends itself SIGTERM as it takes
step S's batch (kind `stop` trains like `dp`); `refuse:P`: building the task fails on process P
(`_refused_start`); `termstart:P`: a SIGTERM reaches process P alone as it builds the task
(`_terminated_start`; `termsetup:P`: as it loads the validation batches, `termagree:P`: in the
start's agreement, `_terminated_setup`);
`termshare:P`: a SIGTERM reaches P alone in its share of a long `together` block (`failshare:P`:
it fails there; `_stopped_in_share`);
`termtogether:P`: a SIGTERM reaches P alone in an `agreements.together` block's agreement, and
`termchecks:P` in `main.run_checked`'s (`_terminated_in_agreement`);
`unreadable:S:P`: resuming DIR/dp for S steps, process P cannot read its checkpoint
(`_unreadable_resume`; `termrestore:S:P`: a SIGTERM reaches P alone as it reads it). The process
writes DIR/result_<I>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import signal


def toy_task(config):
  """The toy task of test_loop.py with loaders that give every step the same GLOBAL batch
  whatever the process count: global batch s = records[16(s-1):16s], process p holds its
  rows [p·L:(p+1)·L] (L = the local batch), so multi-process losses can equal single-process ones."""
  import grain
  import jax.numpy as jnp
  import numpy as np
  import optax

  from sadm_jax.train import loop
  from tests.train.test_loop import Toy, toy_loss
  model = Toy()
  rng = np.random.default_rng(0)
  records = [{"image": rng.normal(size=(8, 8, 1)).astype(np.float32), "step": np.int32(i // 16 + 1)}
             for i in range(160)]  # "step": the global step its batch runs at (not sent)
  val = [{"image": rng.normal(size=(8, 8, 1)).astype(np.float32)} for _ in range(12)]

  def init(key):
    v = model.init(key, jnp.zeros((1, 8, 8, 1)), False)
    return {"params": v["params"], "model_state": v["batch_stats"]}

  def train_loader(local_bs, shard_index, shard_count):
    batches = grain.MapDataset.source(records).batch(local_bs, drop_remainder=True)
    return batches[shard_index::shard_count].to_iter_dataset()

  def val_batches(local_bs, shard_index, shard_count):
    mine = val[shard_index::shard_count]
    return [{"image": np.stack([r["image"] for r in mine])}]

  return loop.Task("toy", init, toy_loss(model), optax.sgd(0.1), train_loader, val_batches,
                   num_train_volumes=len(records))


def toy_config(fsdp: bool, num_steps: int):
  from configs import default
  c = default.get_config()
  c.mesh.fsdp = fsdp
  c.mesh.fsdp_min_size = 8  # shard even the toy's small kernels
  c.train.batch_size = 16
  c.train.num_steps = num_steps
  c.train.log_every = 1
  c.train.eval_every = 3
  c.train.checkpoint_every = 2
  c.train.tensorboard = False
  c.train.async_checkpoints = False
  return c


def _refused_start(config, workdir: str, pid: int) -> str:
  """Trains the toy task in `workdir` whose building fails on process `pid` alone as stage II's
  does when its host cannot read the frozen cDDPM (`runs.open_run` of a directory that is not a
  trained run); returns the error this process stopped with, '<type>: <message>'."""
  import jax

  from sadm_jax.train import loop, runs

  def task():
    if jax.process_index() == pid:
      runs.open_run(os.path.join(workdir, "no_run"), expect="cddpm", setting="sadm.cddpm_workdir")
    return toy_task(config)
  try:
    loop.train(config, workdir, task)
  except ValueError as e:
    return f"{type(e).__name__}: {e}"
  return "trained"


def _terminated_start(config, workdir: str, pid: int) -> str:
  """Trains the toy task in `workdir` while a SIGTERM reaches process `pid` alone as it builds the
  task (loading its data: the handler of `signals.terminate_as_interrupt` raises there); returns
  how this process stopped, '<type>: <message>'."""
  import jax

  from sadm_jax.train import loop
  from sadm_jax.utils import signals

  def task():
    if jax.process_index() == pid:
      raise signals.Terminated
    return toy_task(config)
  try:
    loop.train(config, workdir, task)
  except (ValueError, KeyboardInterrupt) as e:
    return f"{type(e).__name__}: {e}"
  return "trained"


def _sigterm_after_first_gather(gather, pid: int):
  """`gather` (`distributed.multihost_allgather`) that sends process `pid` a SIGTERM as its first
  call returns: inside an all-gather of JSON (`distributed.allgather_json`), between its two
  collectives, while the others are in it too."""
  import jax
  calls = []

  def gather_then_term(x):
    out = gather(x)
    calls.append(1)
    if jax.process_index() == pid and len(calls) == 1:
      os.kill(os.getpid(), signal.SIGTERM)
    return out
  return gather_then_term


def _terminated_setup(config, workdir: str, pid: int, in_agreement: bool = False) -> str:
  """Trains the toy task in `workdir` (under `python -m sadm_jax.main`'s SIGTERM handler) while
  a SIGTERM reaches process `pid` alone as it loads the validation batches, after Orbax's
  barriers (`in_agreement`: inside the start's all-gather, between its two collectives); returns
  how this process stopped, '<type>: <message>'."""
  import jax

  from sadm_jax import distributed
  from sadm_jax.train import loop
  from sadm_jax.utils import signals
  task = toy_task(config)
  val_batches, gather = task.val_batches, distributed.multihost_allgather

  def term_then_val(*args):
    if jax.process_index() == pid and not in_agreement:
      os.kill(os.getpid(), signal.SIGTERM)
    return val_batches(*args)

  task.val_batches = term_then_val
  if in_agreement:
    distributed.multihost_allgather = _sigterm_after_first_gather(gather, pid)
  try:
    with signals.terminate_as_interrupt():
      loop.train(config, workdir, task)
  except (ValueError, KeyboardInterrupt) as e:
    return f"{type(e).__name__}: {e}"
  finally:
    distributed.multihost_allgather = gather
  return "trained"


def _terminated_in_agreement(config, workdir: str, pid: int, checks: bool) -> str:
  """Under `python -m sadm_jax.main`'s SIGTERM handler, a SIGTERM reaches process `pid` alone
  while it waits in the agreement of a `agreements.together` block outside training (an
  evaluation's phase; `checks`: in `main.run_checked`'s start-up checks, its stage a no-op);
  returns how this process stopped, '<type>: <message>'."""
  from sadm_jax import agreements, distributed
  from sadm_jax import main as main_lib
  from sadm_jax import validate
  from sadm_jax.utils import signals
  gather, validate_at, stage_at = (distributed.multihost_allgather, validate.validate,
                                   main_lib.run_stage)
  distributed.multihost_allgather = _sigterm_after_first_gather(gather, pid)
  try:
    with signals.terminate_as_interrupt():
      if checks:
        validate.validate = lambda *a, **k: None
        main_lib.run_stage = lambda *a: None
        main_lib.run_checked(config, workdir, report_interrupt=False, several=True)
      else:
        with agreements.together("a block"):
          pass
  except (ValueError, KeyboardInterrupt) as e:
    return f"{type(e).__name__}: {e}"
  finally:
    distributed.multihost_allgather, validate.validate, main_lib.run_stage = (
        gather, validate_at, stage_at)
  return "went on"


def _stopped_in_share(pid: int, interrupted: bool) -> tuple[str, int]:
  """Under `python -m sadm_jax.main`'s SIGTERM handler, every process works through 300 batches
  of 0.1 s in a `together` block, looking at its board between batches (`check_others`), as an
  evaluation's passes do; process `pid` gets a SIGTERM (`interrupted`, else a ValueError) at its
  third batch. Returns how this process stopped, '<type>: <message>', and its batches done."""
  import time

  import jax

  from sadm_jax import agreements
  from sadm_jax.utils import signals
  done = 0
  try:
    with signals.terminate_as_interrupt(), agreements.together("the shares"):
      for batch in range(300):
        agreements.check_others()
        if jax.process_index() == pid and batch == 2:
          if not interrupted:
            raise ValueError("volume 3: NaN scores")
          os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.1)
        done += 1
  except (ValueError, KeyboardInterrupt) as e:
    return f"{type(e).__name__}: {e}", done
  return "went on", done


def _unreadable_resume(config, workdir: str, pid: int, terminated: bool = False) -> str:
  """Resumes the toy task in `workdir` where process `pid` alone cannot read the checkpoint (a file
  its host's mount cannot read; with `terminated`, a SIGTERM reaches it alone as it reads);
  returns the error this process stopped with, '<type>: <message>'."""
  import jax

  from sadm_jax.train import checkpoint, loop
  from sadm_jax.utils import signals
  real = checkpoint.Checkpointer._restore

  def restore(*args, **kwargs):
    if jax.process_index() == pid:
      if terminated:
        raise signals.Terminated
      raise PermissionError(13, "Permission denied", os.path.join(workdir, "checkpoints"))
    return real(*args, **kwargs)
  checkpoint.Checkpointer._restore = staticmethod(restore)
  try:
    loop.train(config, workdir, toy_task(config))
  except (ValueError, KeyboardInterrupt) as e:
    return f"{type(e).__name__}: {e}"
  finally:
    checkpoint.Checkpointer._restore = staticmethod(real)
  return "trained"


def main() -> None:
  ap = argparse.ArgumentParser()
  ap.add_argument("--coordinator", required=True)
  ap.add_argument("--num_processes", type=int, required=True)
  ap.add_argument("--process_id", type=int, required=True)
  ap.add_argument("--devices", type=int, default=4)
  ap.add_argument("--out", required=True)
  ap.add_argument("--runs", default="dp:3")
  args = ap.parse_args()
  os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={args.devices}"
  os.environ["JAX_PLATFORMS"] = "cpu"

  from sadm_jax import distributed
  config = toy_config(False, 0)
  config.distributed.coordinator_address = args.coordinator
  config.distributed.num_processes = args.num_processes
  config.distributed.process_id = args.process_id
  plan = distributed.maybe_initialize(config)  # before any JAX backend use

  import jax
  from jax._src import distributed as jax_distributed
  if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  from sadm_jax.train import checkpoint, loop, sharding
  result = {"plan": plan.source, "process_index": jax.process_index(),
            "process_count": jax.process_count(), "devices": jax.device_count(),
            "local_devices": jax.local_device_count(), "runs": [],
            # JAX's preemption service (off: it would catch SIGTERM before sadm_jax.main does)
            "preemption_service": jax_distributed.global_state.preemption_sync_manager is not None}
  distributed.log_topology(config)  # prints on process 0 only
  from sadm_jax.utils import signals
  device_batch = loop.Trainer.device_batch
  for run in args.runs.split(","):
    kind, steps, *stop = run.split(":")
    config = toy_config(kind == "fsdp", int(steps))
    workdir = os.path.join(args.out, kind)
    if kind == "refuse":  # `refuse:P`: process P cannot open the run its task needs
      result["runs"].append({"kind": kind, "error": _refused_start(config, workdir, int(steps))})
      continue
    if kind in ("termsetup", "termagree"):  # `termsetup:P`: a SIGTERM reaches process P alone
      # in the set-up (`termagree:P`: in the start's agreement)
      result["runs"].append({"kind": kind, "error": _terminated_setup(
          config, workdir, int(steps), kind == "termagree")})
      continue
    if kind in ("termtogether", "termchecks"):  # `termtogether:P`: a SIGTERM reaches process P
      # alone in a together block's agreement (`termchecks:P`: in the start-up checks')
      result["runs"].append({"kind": kind, "error": _terminated_in_agreement(
          config, workdir, int(steps), kind == "termchecks")})
      continue
    if kind in ("termshare", "failshare"):  # `termshare:P`: a SIGTERM reaches process P alone
      # in its share of a long together block (`failshare:P`: it fails there)
      error, done = _stopped_in_share(int(steps), kind == "termshare")
      result["runs"].append({"kind": kind, "error": error, "batches": done})
      continue
    if kind == "termstart":  # `termstart:P`: a SIGTERM reaches process P alone in the start
      result["runs"].append({"kind": kind, "error": _terminated_start(config, workdir,
                                                                      int(steps))})
      continue
    if kind in ("unreadable", "termrestore"):  # `unreadable:S:P`: resuming dp/, process P
      # cannot read the step (`termrestore:S:P`: a SIGTERM reaches P alone as it reads)
      result["runs"].append({"kind": kind, "error": _unreadable_resume(
          config, os.path.join(args.out, "dp"), int(stop[0]), kind == "termrestore")})
      continue
    task = toy_task(config)

    def batch_then_stop(trainer, local, at=[int(k) for k in stop]):  # a scheduler's SIGTERM
      if at and int(local.get("step", [0])[0]) == at[0] and jax.process_index() == at[1]:
        os.kill(os.getpid(), signal.SIGTERM)
      return device_batch(trainer, local)
    loop.Trainer.device_batch = batch_then_stop
    try:
      out = loop.train(config, workdir, task)
    except signals.Terminated:
      with checkpoint.Checkpointer(workdir, create=False) as saved:
        result["runs"].append({"kind": kind, "terminated": True, "latest": saved.latest_step()})
      continue
    trainer = loop.Trainer(config, task, sharding.make_mesh(config))  # shardings only, no compile
    kernel = trainer.state_shardings.params["Conv_0"]["kernel"]
    result["runs"].append({"kind": kind, "steps": int(steps), "kernel_spec": str(kernel.spec),
                           **out})
  with open(os.path.join(args.out, f"result_{args.process_id}.json"), "w") as f:
    json.dump(result, f)


if __name__ == "__main__":
  main()
