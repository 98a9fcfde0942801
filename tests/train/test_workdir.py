"""A workdir belongs to one run: config guard, lock, damaged checkpoints (subprocesses on one tiny cDDPM run)."""

import json
import os
import shutil
import socket
import subprocess

import pytest

from sadm_jax.train import workdir as workdir_lib
from tests.helpers import REPO, metric_series
from tests.train.resume_jobs import cli, damage as _damage, env, snapshot as _snapshot


def _run(data_dir, workdir, *extra, steps=8):
  """The tiny cDDPM run in `workdir` by the CLI, checkpoints every 4 steps: the test process's XLA
  flags (8 fake devices) and the session's tiny cDDPM learning rate, so the same train-step
  program as the session's tiny runs and the resume jobs (the compilation cache hits)."""
  return subprocess.run(cli(data_dir, workdir, steps, 4, *extra), cwd=REPO, env=env(),
                        capture_output=True, text=True, timeout=900)


def _error_line(res) -> str:
  lines = [l for l in res.stderr.splitlines() if l.strip()]
  errors = [l for l in lines if l.startswith("error: ")]
  assert len(errors) == 1, res.stderr[-3000:]
  assert "Traceback" not in res.stderr, res.stderr[-3000:]
  return errors[0]


@pytest.fixture(scope="module")
def trained(tiny_data_dir, cddpm_8_dir):
  """(data_dir, workdir) of the session's tiny cDDPM trained 8 steps with checkpoints at steps 4
  and 8 (tests/conftest.py: the CLI, with this module's config up to resumable keys); tests
  change copies."""
  assert sorted(os.listdir(os.path.join(cddpm_8_dir, "checkpoints"))) == ["4", "8"]
  assert not os.path.exists(os.path.join(cddpm_8_dir, workdir_lib.LOCK_FILE))  # released
  return tiny_data_dir, cddpm_8_dir


def _copy(trained, tmp_path) -> str:
  work = str(tmp_path / "run")
  shutil.copytree(trained[1], work)
  return work


def test_changed_model_seed_or_fold_is_refused_before_anything_is_written(trained, tmp_path):
  work = _copy(trained, tmp_path)
  before = _snapshot(work)
  res = _run(trained[0], work, "--config.model.unet.model_channels=8", "--config.seed=7",
             "--config.data.fold=1", steps=10)
  assert res.returncode == 2
  line = _error_line(res)
  assert line.startswith(f"error: {work}: holds a run started with another config (")
  for diff in ("data.fold 0 → 1", "model.unet.model_channels 16 → 8", "seed 3141 → 7"):
    assert diff in line, line
  assert "train.num_steps" not in line  # may change on resume
  assert _snapshot(work) == before


def test_resumable_keys_may_change(trained, tmp_path):
  work = _copy(trained, tmp_path)
  # num_steps equal to the last checkpoint: resumes and stops without compiling a step.
  res = _run(trained[0], work, "--config.train.log_every=3", "--config.train.keep_checkpoints=3",
             "--config.data.num_workers=1", "--config.mesh.num_devices=1", steps=8)
  assert res.returncode == 0, res.stderr[-3000:]
  assert "resumed from checkpoint step 8" in res.stdout
  # Placeholders are compared resolved: faithful=False and an explicit default are the same.
  from configs import cddpm as cddpm_config
  old, new = cddpm_config.get_config("tiny"), cddpm_config.get_config("tiny")
  new.data.slice_sampling, new.train.num_epochs, new.evaluate.lam = "brain", 7, 0.1
  new.data.loader_threads, new.data.prefetch_batches = 2, 8  # reading, not the data read
  assert workdir_lib.config_differences(old.to_dict(), new.to_dict()) == []
  new.data.slice_sampling = "uniform"
  assert workdir_lib.config_differences(old.to_dict(), new.to_dict()) == [
      ("data.slice_sampling", "brain", "uniform")]
  # data.loader_workers changes the saved grain iterator state: refused.
  res = _run(trained[0], work, "--config.data.loader_workers=2", steps=8)
  assert res.returncode == 2 and "data.loader_workers 0 → 2" in _error_line(res)


def test_moved_data_resumes_and_other_data_is_refused(trained, tmp_path):
  """data.data_dir may change on resume when the run's training and validation volumes are
  there (the data moved; preprocessed again into the new place's cache, so data.cache_dir
  changes too: the saved data loader state names the volumes' content, not their cache paths);
  other volumes there are refused in one line, and no step is taken for damage and moved aside."""
  data, _ = trained
  work = _copy(trained, tmp_path)
  moved = str(tmp_path / "data_moved")
  shutil.copytree(data, moved, ignore=shutil.ignore_patterns("cache"))
  res = _run(moved, work, steps=8)
  assert res.returncode == 0, res.stderr[-3000:]
  assert "resumed from checkpoint step 8" in res.stdout
  # One training volume fewer at the new place: not this run's data.
  split = next(os.path.join(d, "IXI_train_fold0.csv") for d, _, files in os.walk(moved)
               if "IXI_train_fold0.csv" in files)
  with open(split) as f:
    lines = f.read().splitlines()
  with open(split, "w") as f:
    f.write("\n".join(lines[:-1]) + "\n")
  before = _snapshot(work)
  res = _run(moved, work, steps=8)
  assert res.returncode == 2
  line = _error_line(res)
  assert "checkpoints: step 8 was saved while training on other data (" in line, line
  assert _snapshot(work) == before


def test_workdir_locked_by_a_live_process_is_refused(trained, tmp_path):
  work = _copy(trained, tmp_path)
  holder = {"host": socket.gethostname(), "pid": os.getpid(),
            "start": workdir_lib._start_time(os.getpid()), "since": "2026-01-01T00:00:00"}
  with open(os.path.join(work, ".lock"), "w") as f:
    json.dump(holder, f)
  before = _snapshot(work)
  res = _run(trained[0], work, steps=10)
  assert res.returncode == 2
  line = _error_line(res)
  assert line.startswith(f"error: {work}: in use by process {os.getpid()} on host "
                         f"{socket.gethostname()} (since 2026-01-01T00:00:00"), line
  assert _snapshot(work) == before


def test_stale_lock_of_a_dead_process_is_taken_over(trained, tmp_path):
  work = _copy(trained, tmp_path)
  dead = subprocess.Popen(["true"])
  dead.wait()
  with open(os.path.join(work, ".lock"), "w") as f:
    json.dump({"host": socket.gethostname(), "pid": dead.pid, "start": "1",
               "since": "2026-01-01T00:00:00"}, f)
  res = _run(trained[0], work, steps=8)
  assert res.returncode == 0, res.stderr[-3000:]
  assert f"taking over the stale lock of process {dead.pid}" in res.stderr
  assert "resumed from checkpoint step 8" in res.stdout
  assert not os.path.exists(os.path.join(work, ".lock"))


def test_damaged_newest_step_is_moved_aside_and_previous_step_resumes(damaged_and_resumed,
                                                                      trained):
  """A truncated array file in the newest step: the CLI logs it in one line, moves the step
  aside untouched and retrains steps 5-8 from step 4 to the uninterrupted run's numbers. (The
  CLI run is a background job of the session, tests/train/resume_jobs.py `damaged`: a copy of
  `trained` damaged with `_damage(work, 8, "truncated_array")`.)"""
  job, outcome = damaged_and_resumed
  work = os.path.join(job, "run")
  assert outcome["returncode"] == 0, outcome["stderr"][-3000:]
  ckpt_dir = os.path.join(work, "checkpoints")
  warnings = [l for l in outcome["stderr"].splitlines()
              if f"checkpoint step 8 in {ckpt_dir} cannot be restored" in l]
  assert len(warnings) == 1 and "moved it aside to 8.damaged-1" in warnings[0], outcome["stderr"]
  # ... and only there: TensorStore's late reads once echoed 'Event loop is closed' hundreds of
  # times (tracebacks), asyncio the failed task once more.
  assert "Traceback" not in outcome["stderr"] and "never retrieved" not in outcome["stderr"], (
      outcome["stderr"][-3000:])
  assert "resumed from checkpoint step 4" in outcome["stdout"]
  # Moved aside untouched (never deleted); steps 5-8 retrained into a new step 8.
  assert _snapshot(os.path.join(ckpt_dir, "8.damaged-1")) == outcome["damaged_snapshot"]
  assert sorted(os.listdir(ckpt_dir)) == ["4", "8", "8.damaged-1"]
  with open(os.path.join(work, "metrics.jsonl")) as f:
    steps = [json.loads(l)["step"] for l in f]
  assert steps == sorted(steps) and steps[-1] == 8
  # Steps 5-8 retrained from step 4 give the uninterrupted run's numbers, bit for bit (CPU).
  for key in ("train/loss", "val/loss"):
    assert metric_series(work, key) == metric_series(trained[1], key), key


@pytest.mark.parametrize("kind", ["missing_metadata", "empty_step_dir"])
def test_other_damage_restores_the_previous_step(trained, tmp_path, kind, caplog):
  """The other kinds of damage, in process: `Checkpointer.restore_usable` (what a resuming run
  calls first) moves the step aside untouched and restores step 4 exactly as saved (the test
  above shows a resume from step 4 retraining to the uninterrupted run's numbers)."""
  import jax
  import numpy as np

  from configs import cddpm as cddpm_config
  from sadm_jax.train import cddpm, loop, sharding
  from sadm_jax.train.checkpoint import Checkpointer
  from tests.helpers import with_data

  work = _copy(trained, tmp_path)
  _damage(work, 8, kind)
  damaged = _snapshot(os.path.join(work, "checkpoints", "8"))
  c = with_data(cddpm_config.get_config("tiny"), trained[0])
  task = cddpm.cddpm_task(c)
  trainer = loop.Trainer(c, task, sharding.make_mesh(c))
  loader = lambda: iter(task.train_loader(
      sharding.local_batch_size(c.train.batch_size, trainer.mesh), 0, 1))
  target = (trainer.abstract_state, trainer.state_shardings)
  with Checkpointer(work, async_save=False) as ckpt:
    step, state, meta = ckpt.restore_usable(*target, loader())
  assert step == 4 and meta["task"] == "cddpm"
  ckpt_dir = os.path.join(work, "checkpoints")
  warnings = [r.getMessage() for r in caplog.records
              if f"checkpoint step 8 in {ckpt_dir} cannot be restored" in r.getMessage()]
  assert len(warnings) == 1 and "moved it aside to 8.damaged-1" in warnings[0], warnings
  assert _snapshot(os.path.join(ckpt_dir, "8.damaged-1")) == damaged
  assert sorted(os.listdir(ckpt_dir)) == ["4", "8.damaged-1"]
  with Checkpointer(trained[1], async_save=False, create=False) as original:
    want, _ = original.restore(*target, loader(), step=4)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(state), jax.device_get(want))


def test_no_usable_checkpoint_is_a_clear_error_every_time(trained, tmp_path):
  work = _copy(trained, tmp_path)
  _damage(work, 8, "empty_step_dir")
  _damage(work, 4, "missing_metadata")
  ckpt_dir = os.path.join(work, "checkpoints")
  for attempt in range(2):  # the second start must not silently train from step 0
    res = _run(trained[0], work, steps=8)
    assert res.returncode == 2
    line = _error_line(res)
    assert line == (f"error: {ckpt_dir}: no usable checkpoint to resume from (damaged steps "
                    "moved aside: 4.damaged-1, 8.damaged-1); start the run again in a new "
                    "workdir"), (attempt, line)
    assert sorted(os.listdir(ckpt_dir)) == ["4.damaged-1", "8.damaged-1"]


def test_a_start_that_failed_before_any_checkpoint_binds_nothing(tmp_path):
  """A first start that stopped before its first checkpoint (here: a wrong data directory) left
  train_config.json; the corrected command starts (and saves its own config), while a workdir
  with a checkpoint still refuses the change."""
  from configs import cddpm as cddpm_config
  work = str(tmp_path / "run")
  first = cddpm_config.get_config("tiny")
  first.data.data_dir = "/wrong/data"
  with pytest.raises(RuntimeError, match="data error"):
    with workdir_lib.claim(first, work):
      raise RuntimeError("data error")
  fixed = cddpm_config.get_config("tiny")
  fixed.data.data_dir = "/right/data"
  with workdir_lib.claim(fixed, work):
    pass
  with open(os.path.join(work, workdir_lib.CONFIG_FILE), encoding="utf-8") as f:
    assert json.load(f)["data"]["data_dir"] == "/right/data"
  os.makedirs(os.path.join(work, "checkpoints", "3"))
  # With a checkpoint the run is bound: another fold is refused at once. (Another data directory
  # passes the claim and is checked against the run's recorded volumes when it is restored:
  # test_moved_data_resumes_and_other_data_is_refused.)
  other = cddpm_config.get_config("tiny")
  other.data.data_dir, other.data.fold = "/right/data", 1
  with pytest.raises(workdir_lib.WorkdirError, match=r"data.fold 0 → 1"):
    with workdir_lib.claim(other, work):
      pass
  with workdir_lib.claim(first, work):
    pass


def test_unreadable_saved_config_is_named(tmp_path):
  from configs import cddpm as cddpm_config
  work = tmp_path / "run"
  (work / "checkpoints" / "3").mkdir(parents=True)
  (work / workdir_lib.CONFIG_FILE).write_text('{"stage": "cddpm", "se')
  with pytest.raises(workdir_lib.WorkdirError) as e:
    with workdir_lib.claim(cddpm_config.get_config("tiny"), str(work)):
      pass
  assert str(e.value).startswith(f"{work / workdir_lib.CONFIG_FILE}: unreadable (")
  assert str(e.value).endswith("); restore it, or delete it to compare with the newest "
                               "checkpoint's config")
  assert not os.path.exists(work / workdir_lib.LOCK_FILE)  # released


class _Killed(BaseException):
  """Stands for a SIGKILL: nothing after it runs (no except Exception catches it)."""


def test_a_kill_while_taking_the_lock_leaves_no_lock_that_refuses_the_rerun(tmp_path, monkeypatch):
  # Killed between creating <workdir>/.lock and writing its holder into it, a start left an
  # empty lock: every later start was refused ("locked by an unreadable .lock; delete it").
  work = str(tmp_path / "w")
  os.makedirs(work)

  def killed(*args, **kwargs):
    raise _Killed()

  monkeypatch.setattr(os, "fdopen", killed)
  with pytest.raises(_Killed):
    with workdir_lib.lock(work):
      pass
  monkeypatch.undo()
  lock = os.path.join(work, workdir_lib.LOCK_FILE)
  assert not os.path.exists(lock) or os.path.getsize(lock) > 0
  with workdir_lib.lock(work):  # the rerun takes the lock
    with open(lock) as f:
      assert json.load(f)["pid"] == os.getpid()
  assert os.listdir(work) == []
