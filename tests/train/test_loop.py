"""Tests of the generic loop's machinery on a toy task: sharding equivalence, one compile, NaN stop, resume."""

import json
import math
import os
import shutil

import grain
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn

from configs import default
from sadm_jax.train import checkpoint as checkpoint_lib
from sadm_jax.train import loop, sharding
from sadm_jax.utils import xla_flags
from sadm_jax.data.pipeline import ListSource


class Toy(nn.Module):
  """Conv + BatchNorm + Dense: exercises params and batch_stats."""

  @nn.compact
  def __call__(self, x, train):
    h = nn.Conv(8, (3, 3))(x)
    h = nn.BatchNorm(use_running_average=not train, momentum=0.9)(h)
    h = nn.relu(h).mean(axis=(1, 2))
    return nn.Dense(1)(h)[:, 0]


def toy_loss(model, nan_after=None, counter=None):
  def loss_fn(params, batch_stats, batch, key, train, frozen=None):
    if counter is not None:
      counter.append(1)  # runs at trace time only
    noise = 0.01 * jax.random.normal(key, batch["image"].shape)
    v = {"params": params, "batch_stats": batch_stats}
    if train:
      y, upd = model.apply(v, batch["image"] + noise, True, mutable=["batch_stats"])
      stats = upd["batch_stats"]
    else:
      y, stats = model.apply(v, batch["image"], False), batch_stats
    per = (y - batch["image"].mean(axis=(1, 2, 3))) ** 2
    if nan_after is not None:
      per = per * jnp.where(batch["step"][0] > nan_after, jnp.nan, 1.0)
    return per, (stats, {})

  return loss_fn


def toy_task(config, nan_after=None, counter=None, tx=None):
  model = Toy()
  rng = np.random.default_rng(0)
  records = [{"image": rng.normal(size=(8, 8, 1)).astype(np.float32), "step": np.int32(i // 16 + 1)}  # = the step its batch of 16 runs at
             for i in range(400)]

  def init(key):
    v = model.init(key, jnp.zeros((1, 8, 8, 1)), False)
    return {"params": v["params"], "model_state": v["batch_stats"]}

  def train_loader(local_bs, shard_index, shard_count):
    sh = grain.sharding.ShardOptions(shard_index, shard_count, drop_remainder=True)
    return grain.DataLoader(data_source=ListSource(records),
                            sampler=grain.samplers.IndexSampler(len(records), sh, shuffle=False,
                                                                num_epochs=1),
                            operations=[grain.transforms.Batch(local_bs, drop_remainder=True)],
                            shard_options=sh)

  def val_batches(local_bs, shard_index, shard_count):
    return [{"image": np.stack([r["image"] for r in records[:6]]),
             "step": np.zeros(6, np.int32)}]

  return loop.Task("toy", init, toy_loss(model, nan_after, counter), tx or optax.adam(1e-2),
                   train_loader, val_batches, num_train_volumes=len(records),
                   batch_keys=("image", "step"))


def _config(num_devices=0, fsdp=False):
  c = default.get_config()
  c.mesh.num_devices = num_devices
  c.mesh.fsdp = fsdp
  c.mesh.fsdp_min_size = 8  # shard even the toy's small kernels
  c.train.batch_size = 16
  c.train.num_steps = 6
  c.train.log_every = 1
  c.train.eval_every = 3
  c.train.checkpoint_every = 2
  c.train.tensorboard = False
  c.train.async_checkpoints = False
  return c


def _run_steps(num_devices, fsdp=False, n=3):
  config = _config(num_devices, fsdp)
  task = toy_task(config, tx=optax.sgd(0.1))
  tr = loop.Trainer(config, task, sharding.make_mesh(config))
  state = tr.init_state()
  rng = np.random.default_rng(1)
  losses = []
  for i in range(n):
    local = {"image": rng.normal(size=(16, 8, 8, 1)).astype(np.float32),
             "step": np.full(16, i + 1, np.int32)}
    state, m = tr.train_step(state, tr.device_batch(local), tr.train_key, tr.frozen)
    losses.append(float(m["loss"]))
  return losses, jax.device_get(state.params), state


def test_eight_devices_match_one_device():
  assert len(jax.devices()) == 8
  l1, p1, _ = _run_steps(1)
  l8, p8, s8 = _run_steps(8)
  lf, pf, sf = _run_steps(8, fsdp=True)
  # Tolerance: float32 reductions are split differently across devices (observed ~1e-7).
  np.testing.assert_allclose(l8, l1, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(lf, l1, rtol=1e-5, atol=1e-6)
  for a, b, c in zip(jax.tree.leaves(p1), jax.tree.leaves(p8), jax.tree.leaves(pf)):
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(c, a, rtol=1e-5, atol=1e-6)
  # FSDP really shards the conv kernel over the 8 devices; data parallel replicates it.
  k_f = sf.params["Conv_0"]["kernel"]
  k_d = s8.params["Conv_0"]["kernel"]
  assert k_f.sharding.spec == jax.sharding.PartitionSpec(None, None, None, "data")
  assert k_d.sharding.spec == jax.sharding.PartitionSpec()


def test_train_step_compiles_once(tmp_path):
  counter = []
  config = _config(8)
  task = toy_task(config, counter=counter)
  loop.train(config, str(tmp_path), task)
  # One trace for the train step, one for the eval step, however many steps and evaluations ran.
  assert len(counter) == 2


def test_non_finite_loss_stops_with_step_and_keeps_checkpoint(tmp_path):
  config = _config(8)
  with pytest.raises(loop.NonFiniteLossError, match=r"at step 5; stopping\. The last good "
                                                    r"checkpoint \(step 4\)"):
    loop.train(config, str(tmp_path), toy_task(config, nan_after=4))
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2", "4"]


def test_non_finite_loss_before_any_checkpoint_says_so(tmp_path):
  config = _config(8)
  with pytest.raises(loop.NonFiniteLossError, match=r"at step 1; stopping\. No checkpoint was "
                                                    r"written yet \(.*checkpoints is empty\)$"):
    loop.train(config, str(tmp_path), toy_task(config, nan_after=0))


def test_a_failed_start_still_closes_the_checkpointer(tmp_path, monkeypatch):
  # No usable checkpoint: the error comes before the first step, and Orbax's managers are closed
  # all the same (a manager left open prints a traceback from its thread at interpreter exit).
  config = _config(8)
  config.train.num_steps = 2
  loop.train(config, str(tmp_path), toy_task(config))
  step_dir = tmp_path / "checkpoints" / "2"
  shutil.rmtree(step_dir)
  os.makedirs(step_dir)  # an empty step directory: not restorable
  closed = []
  real_close = checkpoint_lib.Checkpointer.close
  monkeypatch.setattr(checkpoint_lib.Checkpointer, "close",
                      lambda self: (closed.append(self.dir), real_close(self)))
  with pytest.raises(checkpoint_lib.RunError, match="no usable checkpoint to resume from"):
    loop.train(config, str(tmp_path), toy_task(config))
  assert closed == [str(tmp_path / "checkpoints")]


def test_a_start_refused_on_another_process_stops_this_one_before_training(tmp_path,
                                                                           monkeypatch):
  """Process 1 of 2 could not build its task (stage II's frozen cDDPM unreadable on its host):
  this process stops at the start with one line naming it, before any collective of the
  training (the resume's restore, Orbax's barriers) would wait for process 1 (fake 2 processes:
  the agreement's all-gather answers for process 1), and releases the workdir's lock."""
  from sadm_jax import agreements, distributed
  config = _config(8)
  sent = []
  monkeypatch.setattr(distributed, "allgather_json", lambda mine: sent.append(mine) or [
      mine, ["the training's start", "sadm.cddpm_workdir=/c: its best checkpoint (step 2) "
                                     "cannot be restored: OUT_OF_RANGE"]])
  monkeypatch.setattr(loop, "_train", lambda *a: pytest.fail("trained"))
  built = []
  with pytest.raises(agreements.OtherProcessFailed, match=(
      r"^process 1 of 2 failed \(sadm.cddpm_workdir=/c: its best checkpoint \(step 2\) cannot "
      r"be restored: OUT_OF_RANGE\) during the training's start; every process stopped$")):
    loop.train(config, str(tmp_path), lambda: built.append(1) or toy_task(config))
  assert built == [1] and sent == [["the training's start", None]]
  assert not os.path.exists(tmp_path / ".lock")


def test_a_start_refused_here_tells_the_other_processes(tmp_path, monkeypatch):
  """This process's task cannot be built (a run it cannot open): it raises its own error after
  sending its line to the others, which stop with it."""
  from sadm_jax import distributed
  config = _config(8)
  sent = []
  monkeypatch.setattr(distributed, "allgather_json",
                      lambda mine: sent.append(mine) or [mine, ["the training's start", None]])

  def task():
    raise checkpoint_lib.RunError("/c: its best checkpoint (step 2) cannot be restored: x")
  with pytest.raises(checkpoint_lib.RunError, match=r"^/c: its best checkpoint"):
    loop.train(config, str(tmp_path), task)
  assert sent == [["the training's start", "/c: its best checkpoint (step 2) cannot be "
                                           "restored: x"]]
  assert not os.path.exists(tmp_path / ".lock")


def test_asking_for_fewer_steps_than_trained_is_a_clear_error(tmp_path):
  """Resuming with num_steps below the newest checkpoint's step: one RunError, nothing rewritten
  (it reported 'done' at the smaller step with NaN losses, holding the longer-trained model)."""
  config = _config(8)
  config.train.num_steps = 4
  loop.train(config, str(tmp_path), toy_task(config))
  config.train.num_steps = 2
  _assert_refused(tmp_path, config, "holds a run already trained to step 4, beyond the 2 ")


def _assert_refused(tmp_path, config, start: str) -> None:
  """Training `config` in `tmp_path` raises one RunError `<tmp_path>: <start>step(s) this config
  asks for ...` and leaves run.json as it was."""
  with open(tmp_path / "run.json") as f:
    before = f.read()
  with pytest.raises(checkpoint_lib.RunError) as e:
    loop.train(config, str(tmp_path), toy_task(config))
  assert str(e.value) == (f"{tmp_path}: {start}step(s) this config asks for (train.num_steps / "
                          "train.num_epochs); ask for at least that many, or use a new workdir")
  with open(tmp_path / "run.json") as f:
    assert f.read() == before


def test_a_best_checkpoint_past_the_asked_steps_is_a_clear_error(tmp_path):
  """A run killed after validating step 3 (best/ at 3 or 4) but before checkpoint 4 resumes from
  step 2: asking for 2 steps then finished at once and left best/ from beyond the run's end,
  which evaluation and predict would use. One RunError instead, nothing rewritten."""
  config = _config(8)
  config.train.num_steps = 4
  loop.train(config, str(tmp_path), toy_task(config))
  shutil.rmtree(tmp_path / "checkpoints" / "4")  # the kill: best/ saved, checkpoint 4 not
  best = int(os.listdir(tmp_path / "best")[0])
  assert best in (3, 4)
  config.train.num_steps = 2
  _assert_refused(tmp_path, config,
                  f"its best checkpoint (best/) is from step {best}, beyond the 2 ")
  config.train.num_steps = 4  # asking for the run's own end resumes it
  assert loop.train(config, str(tmp_path), toy_task(config))["step"] == 4


def test_resume_continues_identically(tmp_path):
  config = _config(8)
  full = loop.train(config, str(tmp_path / "a"), toy_task(config))
  config.train.num_steps = 4
  loop.train(config, str(tmp_path / "b"), toy_task(config))
  config.train.num_steps = 6
  resumed = loop.train(config, str(tmp_path / "b"), toy_task(config))
  read = lambda d: [json.loads(l) for l in open(tmp_path / d / "metrics.jsonl")]
  a = [r for r in read("a") if "train/loss" in r]
  b = [r for r in read("b") if "train/loss" in r]
  assert [r["step"] for r in b] == list(range(1, 7))
  assert [r["train/loss"] for r in a] == [r["train/loss"] for r in b]  # bit-identical
  assert full["val_loss"] == resumed["val_loss"] and math.isfinite(full["val_loss"])
  assert os.path.isdir(tmp_path / "b" / "best")


def test_init_program_gets_its_cpu_compiler_options(monkeypatch):
  """On CPU the init program (run once per run) is compiled with `CPU_INIT_COMPILER_OPTIONS`
  (for compile speed), which give the state of XLA's default level bit for bit; GPU keeps its
  defaults."""
  assert loop.init_compiler_options("cpu") == {"xla_backend_optimization_level": 2}
  assert loop.init_compiler_options("gpu") is None
  config = _config(1)
  trainer = loop.Trainer(config, toy_task(config), sharding.make_mesh(config))
  got = jax.device_get(trainer.init_state())
  lowered = trainer.init_program.lower(trainer.init_key, trainer.init_inputs)
  want = lowered.compile({"xla_backend_optimization_level": 3})(trainer.init_key,
                                                                 trainer.init_inputs)
  jax.tree.map(np.testing.assert_array_equal, got, jax.device_get(want))
  # The options reach the init's compilation (an unknown one is refused there).
  monkeypatch.setattr(loop, "CPU_INIT_COMPILER_OPTIONS", {"xla_no_such_option": True})
  trainer = loop.Trainer(config, toy_task(config), sharding.make_mesh(config))
  with pytest.raises(Exception, match="xla_no_such_option"):
    trainer.init_state()


def test_steps_get_the_cpu_heap_option(monkeypatch):
  """On CPU the train and validation steps compile with `xla_flags.train_compiler_options`
  (temporaries in heaps that glibc keeps: tests/utils/test_host_heap.py); the options reach the
  steps' compilation (an unknown one is refused there)."""
  monkeypatch.delenv("SADM_CPU_HEAP_REUSE", raising=False)  # off in this suite (conftest)
  config = _config(1)
  trainer = loop.Trainer(config, toy_task(config), sharding.make_mesh(config))
  assert trainer.step_compiler_options == xla_flags.train_compiler_options("cpu") is not None
  monkeypatch.setenv("SADM_CPU_HEAP_REUSE", "0")
  assert loop.Trainer(config, toy_task(config), sharding.make_mesh(config)).step_compiler_options is None
  monkeypatch.setattr(xla_flags, "train_compiler_options",
                      lambda platform: {"xla_no_such_option": True})
  trainer = loop.Trainer(config, toy_task(config), sharding.make_mesh(config))
  local = {"image": np.zeros((16, 8, 8, 1), np.float32), "step": np.ones(16, np.int32)}
  batches = (trainer.device_batch(local),
             sharding.global_batch({**local, "weight": np.ones(16, np.float32)}, trainer.mesh))
  for step, batch in zip((trainer.train_step, trainer.eval_step), batches):
    with pytest.raises(Exception, match="xla_no_such_option"):
      step.lower(trainer.abstract_state, batch, trainer.train_key, trainer.frozen).compile()


def test_check_references_refuses_other_inputs_on_resume():
  """A resume goes on only with the inputs the checkpoint recorded: the frozen cDDPM's step and
  weights (wherever it is now) and, when data.data_dir changed, the same volumes."""
  c = default.get_config()
  c.data.data_dir = "/new"
  ref = {"workdir": "/a/cddpm", "step": 2, "fingerprint": "aa"}
  data = {"train": "t1", "val": "v1"}
  saved = {"config": {"data": {"data_dir": "/old"}}, "run": {"cddpm": ref, "data": data}}
  loop.check_references("/w", c, {"cddpm": dict(ref, workdir="/b/cddpm"), "data": data}, saved)
  with pytest.raises(checkpoint_lib.RunError,
                     match=r"^/w: this run was trained with data.data_dir=/old, not /new \(the "
                           r"val volumes differ"):
    loop.check_references("/w", c, {"cddpm": ref, "data": {"train": "t1", "val": "v2"}}, saved)
  unrecorded = {"config": {"data": {"data_dir": "/old"}}, "run": {}}
  with pytest.raises(checkpoint_lib.RunError, match="recorded no identity of its data"):
    loop.check_references("/w", c, {"data": data}, unrecorded)
  unmoved = {"config": {"data": {"data_dir": "/new"}}, "run": {}}
  loop.check_references("/w", c, {"data": {"train": "x", "val": ""}}, unmoved)  # nothing to check
  with pytest.raises(checkpoint_lib.RunError, match=r"frozen cDDPM of step 2 .* holds step 3"):
    loop.check_references("/w", c, {"cddpm": dict(ref, step=3), "data": data}, saved)


def test_a_run_that_recorded_less_of_its_data_resumes_from_moved_data():
  """A run that recorded only the 'train' and 'val' fingerprints of its data (before the names
  and volumes were recorded apart) resumes from its moved data, where this version records
  more of the same volumes: the recorded fingerprints are compared, not what it lacks (the
  whole record was compared, and every such run was refused as trained on other volumes)."""
  c = default.get_config()
  c.data.data_dir = "/new"
  saved = {"config": {"data": {"data_dir": "/old"}}, "run": {"data": {"train": "t", "val": "v"}}}
  now = {"data": {"train": "t", "val": "v", "train_names": "n", "train_volumes": "w",
                  "val_names": "m", "val_volumes": "x"}}
  loop.check_references("/w", c, now, saved)
  with pytest.raises(checkpoint_lib.RunError, match=r"\(the train volumes differ"):
    loop.check_references("/w", c, {"data": dict(now["data"], train="t2")}, saved)


def test_a_resumed_start_keeps_what_only_the_first_start_recorded(tmp_path):
  """A cDDPM resumes without reopening the SparK run that initialised its encoder (it may have
  moved or gone): `will_resume` says it resumes, and the run keeps the `pretrained_encoder` its
  first start recorded, while this start's own metadata (e.g. versions) is refreshed."""
  config = _config(8)
  config.train.num_steps = 4
  assert not loop.will_resume(str(tmp_path))
  first = toy_task(config)
  first.meta.update(pretrained_encoder={"workdir": "/gone/spark", "step": 4}, note="first")
  loop.train(config, str(tmp_path), first)
  assert loop.will_resume(str(tmp_path))
  config.train.num_steps = 6
  second = toy_task(config)
  second.meta.update(note="second")
  loop.train(config, str(tmp_path), second)
  with open(tmp_path / "run.json") as f:
    run = json.load(f)["run"]
  assert run["pretrained_encoder"] == {"workdir": "/gone/spark", "step": 4}
  assert run["note"] == "second"
  saved = checkpoint_lib.Checkpointer(str(tmp_path), create=False)
  try:
    assert saved.saved_meta("latest", 6)["run"]["pretrained_encoder"]["step"] == 4
  finally:
    saved.close()


def test_a_resumed_run_records_the_validation_and_training_loss_the_straight_run_does(tmp_path):
  """A checkpoint between two validations records the last validation loss (meta `val_loss`),
  and `train` returns the last losses: the same after a resume as in a run never stopped (a
  resumed start knew no validation loss until its first validation: NaN), also when the run was
  already complete (nothing left to train)."""
  config = _config(8)
  config.train.num_steps, config.train.eval_every = 8, 4  # checkpoints at 2, 4, 6, 8
  straight = loop.train(config, str(tmp_path / "a"), toy_task(config))
  config.train.num_steps = 4
  loop.train(config, str(tmp_path / "b"), toy_task(config))
  config.train.num_steps = 8
  resumed = loop.train(config, str(tmp_path / "b"), toy_task(config))
  again = loop.train(config, str(tmp_path / "b"), toy_task(config))  # complete: resumes at 8
  metas = []
  for d in ("a", "b"):
    with checkpoint_lib.Checkpointer(str(tmp_path / d), create=False) as saved:
      metas.append(saved.saved_meta("latest", 6)["val_loss"])
  assert metas[0] == metas[1] and math.isfinite(metas[0])
  assert straight == resumed == again and math.isfinite(straight["train_loss"])


def test_the_seed_decides_the_initial_state_and_the_step_keys():
  """The same seed gives the same initial state and init/step/validation keys, another seed other
  ones; a task's own seed (a SADM repeat's) is used instead of `config.seed`."""
  def built(seed, task_seed=None):
    config = _config(1)
    config.seed = seed
    task = toy_task(config)
    task.seed = task_seed
    trainer = loop.Trainer(config, task, sharding.make_mesh(config))
    keys = [jax.random.key_data(k) for k in (trainer.init_key, trainer.train_key,
                                             trainer.val_key)]
    return jax.device_get(trainer.init_state().params), keys

  same = lambda a, b: all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a),
                                                                jax.tree.leaves(b)))
  (p0, k0), (p0_again, k0_again), (p1, k1) = built(0), built(0), built(1)
  assert same(p0, p0_again) and same(k0, k0_again)
  assert not same(p0, p1) and all(not np.array_equal(a, b) for a, b in zip(k0, k1))
  assert len({np.asarray(k).tobytes() for k in k0}) == 3  # init, steps and validation differ
  p_task, k_task = built(0, task_seed=1)
  assert same(p_task, p1) and same(k_task, k1)
