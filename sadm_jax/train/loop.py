"""The one generic training loop: sharded state, jitted donated steps, validation, checkpoints, resume."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from sadm_jax import agreements
from sadm_jax.train import sharding as shard_lib, workdir as workdir_lib
from sadm_jax.train.checkpoint import Checkpointer, RunError, software_versions
from sadm_jax.train.logger import MetricLogger
from sadm_jax.train.stopping import StopAgreement
from sadm_jax.utils import cost, io, signals, xla_flags
from sadm_jax.train.state import LossFn, TrainState, make_eval_step, make_train_step


class NonFiniteLossError(RuntimeError):
  """Raised when a training loss is NaN/Inf; the last good checkpoint is left untouched."""


@dataclasses.dataclass
class Task:
  """What a stage plugs into the loop.

  Attributes:
    name: for logs.
    init_variables: (key, *init_inputs) -> {'params': ..., 'model_state': ...} (traceable; run
      abstractly first).
    loss_fn: (params, model_state, batch, key, train) -> (per-sample loss [B], (model_state, metrics)).
    tx: the optimiser.
    train_loader: (local_batch, shard_index, shard_count) -> grain DataLoader of local batches.
    val_batches: (local_batch, shard_index, shard_count) -> list of local batches (fixed, Q26).
    num_train_volumes: records per epoch (one slice per volume visit, as the reference).
    batch_keys: batch fields sent to the devices.
    seed: the run's effective seed (init, data order, step keys); None = `config.seed`.
    frozen: host pytree of networks the loss reads but never trains (stage II's cDDPM), passed
      to every step as an argument (never baked into the program); {} when there are none.
    init_inputs: tuple of host pytrees `init_variables` reads after the key (pretrained weights,
      initial statistics), passed to the init program as arguments (never baked into it, so one
      compiled init serves every checkpoint of the same shapes); () when there are none.
    meta: derived facts of the run (effective seed, referenced runs, training data orientation)
      recorded in the run metadata next to the checkpoints; the config itself is never changed.
    keep_partial_batch: an epoch's last partial batch counts as a step, as the reference's
      drop_last=False (BraTS/ATLAS weak supervision: ⌈volumes / batch⌉ steps per epoch); every
      step still takes a full batch of the endless shuffled stream. False: ⌊volumes / batch⌋.
  """
  name: str
  init_variables: Callable[..., dict]
  loss_fn: LossFn
  tx: optax.GradientTransformation
  train_loader: Callable[[int, int, int], Any]
  val_batches: Callable[[int, int, int], Sequence[dict]]
  num_train_volumes: int
  batch_keys: tuple[str, ...] = ("image",)
  seed: int | None = None
  frozen: Any = dataclasses.field(default_factory=dict)
  init_inputs: tuple = ()
  meta: dict = dataclasses.field(default_factory=dict)
  keep_partial_batch: bool = False


# The init program runs once per run, so on CPU its compile time is most of its cost. At LLVM
# optimisation level 2 instead of XLA's default 3 a cDDPM's or SparK's compiles 1.3-2.9x faster
# (tiny cDDPM 9.2 -> 5.1 s, paper size 17.2 -> 13.4 s; the train steps gain nothing) and gives the
# same initial state bit for bit (measured for the tiny cDDPM, SparK and SADM and the paper-size
# cDDPM with jax 0.10.2: BENCHMARKS.md, "Init program"; rerun benchmarks/init_program.py, which
# compares every element, after an upgrade). GPU compilations keep their defaults.
CPU_INIT_COMPILER_OPTIONS = {"xla_backend_optimization_level": 2}


def init_compiler_options(platform: str) -> dict | None:
  """XLA options of the init program on `platform` (None: the backend's defaults)."""
  return dict(CPU_INIT_COMPILER_OPTIONS) if platform == "cpu" else None


def total_steps(config: ml_collections.ConfigDict, num_volumes: int,
                keep_partial_batch: bool = False) -> int:
  """`train.num_steps` if set, else `train.num_epochs` × steps per epoch: volumes // global batch,
  or ⌈volumes / global batch⌉ with `keep_partial_batch` (the reference's drop_last=False)."""
  if config.train.num_steps:
    return int(config.train.num_steps)
  b = int(config.train.batch_size)
  per_epoch = max(1, -(-num_volumes // b) if keep_partial_batch else num_volumes // b)
  return int(config.train.num_epochs) * per_epoch


@dataclasses.dataclass
class Trainer:
  """Builds the sharded state and compiled steps for a task (also used by tests and AOT checks)."""
  config: ml_collections.ConfigDict
  task: Task
  mesh: jax.sharding.Mesh

  def __post_init__(self):
    self.seed = int(self.config.seed if self.task.seed is None else self.task.seed)
    key = jax.random.key(self.seed)
    self.init_key, self.train_key, self.val_key = jax.random.split(key, 3)
    create = lambda k, inputs: TrainState.create(self.task.init_variables(k, *inputs),
                                                 self.task.tx)
    self.abstract_state = jax.eval_shape(create, self.init_key, self.task.init_inputs)
    rules = tuple(tuple(r) for r in self.config.mesh.fsdp_rules) if self.config.mesh.fsdp else ()
    self.state_shardings = shard_lib.state_shardings(self.abstract_state, self.mesh, rules,
                                                     self.config.mesh.fsdp_min_size)
    platform = self.mesh.devices.flat[0].platform
    # The jitted init, (init_key, init_inputs) -> TrainState: `init_state` runs it (public, to
    # lower it for inspection or benchmarks).
    self.init_program = jax.jit(create, out_shardings=self.state_shardings,
                                compiler_options=init_compiler_options(platform))
    repl = shard_lib.replicated(self.mesh)
    # The frozen networks are a replicated argument of both steps, put on the mesh once.
    self.frozen = jax.device_put(self.task.frozen, repl)
    self.init_inputs = jax.device_put(self.task.init_inputs, repl)
    # On CPU both steps keep their temporaries in malloc's heaps (xla_flags.train_compiler_options)
    # unless the first batch shows values larger than a heap (`fit_heap_split`).
    self._steps = (make_train_step(self.task.loss_fn), make_eval_step(self.task.loss_fn))
    self._build_steps(xla_flags.train_compiler_options(platform))

  def _build_steps(self, options: dict | None) -> None:
    batch_sh = shard_lib.batch_sharding(self.mesh)
    repl = shard_lib.replicated(self.mesh)
    self.step_compiler_options = options
    self.train_step = jax.jit(self._steps[0],
                              in_shardings=(self.state_shardings, batch_sh, repl, repl),
                              out_shardings=(self.state_shardings, repl), donate_argnums=(0,),
                              compiler_options=options)
    self.eval_step = jax.jit(self._steps[1],
                             in_shardings=(self.state_shardings, batch_sh, repl, repl),
                             out_shardings=(repl, repl), compiler_options=options)

  def fit_heap_split(self, state, batch) -> bool:
    """Keeps the CPU heap split only if no value of the train step (per device) is larger than a
    heap: such a buffer gets a heap of its own and shares memory with no other buffer (the paper
    cDDPM step at batch 32: 54.2 GiB of temporaries instead of 18.8). Traces the step on `state`
    and `batch` (arrays or ShapeDtypeStructs; nothing compiled); returns whether it is kept."""
    limit = (self.step_compiler_options or {}).get(xla_flags.HEAP_FLAG)
    if not limit:
      return False
    traced = self.train_step.trace(state, batch, self.train_key, self.frozen)
    largest = cost.largest_value_bytes(traced.jaxpr) / self.mesh.size  # activations: batch-sharded
    if largest <= limit:
      return True
    logging.info("CPU heap split off: a value of the train step takes %.0f MiB per device, more "
                 "than a heap (%.0f MiB)", largest / 2 ** 20, limit / 2 ** 20)
    self._build_steps(None)
    return False

  def init_state(self) -> TrainState:
    """The initial state, created directly with its shardings (never on one device first)."""
    return self.init_program(self.init_key, self.init_inputs)

  def device_batch(self, local: dict) -> dict:
    return shard_lib.global_batch({k: local[k] for k in self.task.batch_keys if k in local},
                                  self.mesh)


def _pad(batch: dict, size: int, keys: Sequence[str]) -> dict:
  n = len(batch[keys[0]])
  out = {k: np.concatenate([batch[k], np.zeros((size - n,) + batch[k].shape[1:], batch[k].dtype)])
         for k in keys}
  out["weight"] = np.concatenate([np.ones(n, np.float32), np.zeros(size - n, np.float32)])
  return out


def evaluate(trainer: Trainer, state: TrainState, val_batches: Sequence[dict],
             local_batch: int) -> float:
  """Mean per-sample validation loss with fixed keys per batch (deterministic, Q26)."""
  keys = list(trainer.task.batch_keys)
  n_batches = len(val_batches)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    n_batches = int(np.max(multihost_utils.process_allgather(np.asarray(n_batches))))
  empty = None
  total, count = jnp.zeros(()), jnp.zeros(())
  for i in range(n_batches):
    if i < len(val_batches):
      local = _pad(val_batches[i], local_batch, keys)
    else:
      if empty is None:
        empty = _pad({k: val_batches[0][k][:0] for k in keys}, local_batch, keys)
      local = empty
    batch = shard_lib.global_batch(local, trainer.mesh)
    s, c = trainer.eval_step(state, batch, jax.random.fold_in(trainer.val_key, i), trainer.frozen)
    total, count = total + s, count + c
  return float(total / jnp.maximum(count, 1.0))


def check_references(workdir: str, config: ml_collections.ConfigDict, now: dict,
                     saved_meta: dict) -> None:
  """Refuses to resume a run whose inputs are not the ones its checkpoint (`saved_meta`)
  recorded: a SADM run's frozen cDDPM (step and weight fingerprint; retrained in place, or
  `sadm.cddpm_workdir` pointed at another one), and, when `data.data_dir` differs from the
  checkpoint's, the training and validation volumes (`pipeline.data_identity`'s 'train' and
  'val', which grain's saved iterator state names too: what a run recorded besides them, or
  recorded before them, is not compared; a run that recorded none cannot show its data merely
  moved). `now` is the task's `Task.meta`."""
  recorded = saved_meta.get("run", {})
  before = saved_meta.get("config", {}).get("data", {}).get("data_dir")
  if before is not None and before != config.data.data_dir:
    old, new = recorded.get("data"), now.get("data")
    if not old or any(old.get(k) != (new or {}).get(k) for k in ("train", "val")):
      why = ("it recorded no identity of its data, so a move cannot be told from other data"
             if not old else "the " + " and ".join(
                 k for k in ("train", "val") if old.get(k) != (new or {}).get(k))
             + " volumes differ: names, labels or brain voxels per slice")
      raise RunError(
          f"{workdir}: this run was trained with data.data_dir={before}, not "
          f"{config.data.data_dir} ({why}); resume it with its own data, or use a new workdir")
  old, new = recorded.get("cddpm"), now.get("cddpm")
  if old and new and ((old.get("step"), old.get("fingerprint"))
                      != (new.get("step"), new.get("fingerprint"))):
    raise RunError(
        f"{workdir}: this run was trained with the frozen cDDPM of step {old.get('step')} "
        f"(fingerprint {old.get('fingerprint')}, then at {old.get('workdir')}), but "
        f"{new.get('workdir')} holds step {new.get('step')} (fingerprint "
        f"{new.get('fingerprint')}); resume it with that cDDPM, or use a new workdir")


def will_resume(workdir: str) -> bool:
  """Whether training in `workdir` resumes rather than starts: it holds a checkpoint step (a
  damaged newest step is moved aside and the one before restored; with none usable the run stops,
  `Checkpointer.restore_usable`), so its initial state will not be built."""
  with Checkpointer(workdir, create=False) as ckpt:
    return ckpt.latest_step() is not None


def resumed_meta(run_meta: dict, saved_meta: dict) -> dict:
  """The run metadata of a resumed start: this start's, plus what the first start recorded and a
  resumed task does not know (`pretrained_encoder`: the SparK run that initialised the encoder)."""
  return {**saved_meta.get("run", {}), **run_meta}


def train(config: ml_collections.ConfigDict, workdir: str, task: Task | Callable[[], Task],
          mesh: jax.sharding.Mesh | None = None) -> dict:
  """Trains `task` to `total_steps`, resuming from the latest usable checkpoint in `workdir`.

  The workdir is claimed first (`workdir.claim`: lock, same config as the run it holds); a
  callable `task` is built only then, so a refused start loads no data and opens no other run.
  With several processes, a start refused on one of them (the lock, a run to open that its host
  cannot read: stage II's frozen cDDPM, the SparK encoder) stops every process with one line
  (`agreements.together`), before any collective of the training waits for it.
  Returns {'step', 'train_loss', 'val_loss', 'best_val_loss'}.
  """
  # Several processes: a SIGTERM in the start and set-up (the task's data, the start's agreement,
  # Orbax's barriers, the restore) is noted, and every process stops before the first step
  # (`StopAgreement`); raised there on one host alone, inside or before a collective, it left the
  # others waiting in it or crashed them. One process stops at once.
  with (signals.deferred_termination() if jax.process_count() > 1 else contextlib.nullcontext()
        ) as setup, contextlib.ExitStack() as claimed:
    with agreements.together("the training's start"):
      claimed.enter_context(workdir_lib.claim(config, workdir))
      task = task() if callable(task) else task
    return _train(config, workdir, task, mesh, setup)


def _train(config, workdir, task, mesh, setup: signals.StopRequest | None = None) -> dict:
  mesh = mesh or shard_lib.make_mesh(config)
  trainer = Trainer(config, task, mesh)
  local_bs = shard_lib.local_batch_size(config.train.batch_size, mesh)
  pid, nproc = jax.process_index(), jax.process_count()
  num_steps = total_steps(config, task.num_train_volumes, task.keep_partial_batch)
  loader = task.train_loader(local_bs, pid, nproc)
  it = iter(loader)
  # The with-block closes Orbax's managers on every exit, an error before the first step
  # included (e.g. no usable checkpoint): their background threads must end before the
  # interpreter does, or they print a traceback at exit.
  with Checkpointer(workdir, keep=config.train.keep_checkpoints,
                    async_save=config.train.async_checkpoints) as ckpt:
    run_meta = {**task.meta, "seed": int(trainer.seed), "versions": software_versions()}
    meta_base = {"config": config.to_dict(), "task": task.name, "run": run_meta}
    start, state, saved_meta = ckpt.restore_usable(trainer.abstract_state, trainer.state_shardings,
                                                   it)
    if start is not None:
      check_references(workdir, config, task.meta, saved_meta)
      run_meta = resumed_meta(run_meta, saved_meta)
      meta_base["run"] = run_meta
    asks = (f"the {num_steps} step(s) this config asks for (train.num_steps / train.num_epochs)"
            "; ask for at least that many, or use a new workdir")
    if start is not None and start > num_steps:
      raise RunError(f"{workdir}: holds a run already trained to step {start}, beyond {asks}")
    best_step = ckpt.saved_step("best")  # may be past `start`: validated after the last save
    if best_step is not None and best_step > num_steps:
      raise RunError(f"{workdir}: its best checkpoint (best/) is from step {best_step}, beyond "
                     f"{asks}")
    if pid == 0:
      io.write_json(os.path.join(workdir, "run.json"),
                    {"task": task.name, "run": run_meta, "num_steps": num_steps})
    if start is not None:
      logging.info("resumed %s from step %d (%s)", task.name, start, ckpt.dir)
      if pid == 0:
        print(f"resumed from checkpoint step {start}", flush=True)
    else:
      state, start = trainer.init_state(), 0
    val_batches = list(task.val_batches(local_bs, pid, nproc))
    stopper = StopAgreement(task.name)
    if setup is not None and (asked := stopper.stop_at(start, setup.requested)):
      agreements.raise_interrupt("SIGTERM", asked, "the training's set-up")
    logger = MetricLogger(workdir, num_steps, start_step=start,
                          tensorboard=config.train.tensorboard)
    pending: list[tuple[int, dict]] = []
    # A resumed run starts from the losses its checkpoint recorded, as the run never stopped had
    # them (the checkpoints between two validations and the returned result record them).
    number = lambda v: float(v) if isinstance(v, (int, float)) else float("nan")  # None: NaN
    last: dict[str, float] = ({"loss": number(saved_meta["train_loss"])}
                              if "train_loss" in saved_meta else {})
    val_loss = number(saved_meta.get("val_loss"))

    def flush():
      """Fetches buffered metrics, stops on the first non-finite loss, logs the rest."""
      nonlocal last
      fetched = jax.device_get(pending)
      pending.clear()
      for step, m in fetched:
        if not math.isfinite(float(m["loss"])):
          good = ckpt.latest_step()
          raise NonFiniteLossError(
              f"non-finite training loss ({float(m['loss'])}) at step {step}; stopping. " + (
                  f"The last good checkpoint (step {good}) is kept in {ckpt.dir}" if good is not None
                  else f"No checkpoint was written yet ({ckpt.dir} is empty)"))
        last = {k: float(v) for k, v in m.items()}
        if step % config.train.log_every == 0 or step == num_steps:
          logger.write(step, last)
      if fetched:
        logger.progress(fetched[-1][0], {"loss": last["loss"]})

    def save(step: int) -> None:
      flush()
      ckpt.save(step, state, it, {**meta_base, "step": step, "val_loss": val_loss,
                                  "train_loss": last["loss"]})

    try:  # a SIGTERM (a scheduler's stop) ends the step and saves it first; Ctrl-C stops
      with signals.deferred_termination() as term:  # at once
        term.requested = setup is not None and setup.requested  # (one since the set-up's check)
        for step in range(start + 1, num_steps + 1):
          batch = trainer.device_batch(next(it))
          if step == start + 1:
            trainer.fit_heap_split(state, batch)
          state, metrics = trainer.train_step(state, batch, trainer.train_key, trainer.frozen)
          pending.append((step, metrics))
          is_last = step == num_steps
          if step % config.train.log_every == 0 or is_last:
            flush()
          if step % config.train.eval_every == 0 or is_last:
            flush()
            val_loss = evaluate(trainer, state, val_batches, local_bs)
            logger.write(step, {"loss": val_loss}, prefix="val")
            if ckpt.save_best(step, state, val_loss, {**meta_base, "step": step}) and pid == 0:
              print(f"step {step}: validation loss {val_loss:.5g} (new best)", flush=True)
          saved = step % config.train.checkpoint_every == 0 or is_last
          if saved:
            save(step)
          asked = stopper.stop_at(step, term.requested)
          if asked:
            if not saved:
              save(step)
            ckpt.wait()  # on disk before the line below says so
            if pid == 0:
              who = "" if stopper.processes == 1 else f" (process {', '.join(map(str, asked))})"
              print(f"SIGTERM{who}: checkpoint step {step} saved; stopping", flush=True)
            raise signals.Terminated
        if term.requested:  # after the last step's check: the training is complete
          raise signals.Terminated
    finally:
      logger.close()
    return {"step": int(num_steps), "train_loss": last.get("loss", float("nan")),
            "val_loss": val_loss, "best_val_loss": ckpt.best_loss}
