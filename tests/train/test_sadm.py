"""SADM training at the tiny config: a referenced frozen cDDPM (DRAEM, weak supervision), open_run, refusals."""

import os

import jax
import numpy as np
import pytest

from configs import sadm_atlas, sadm_brats, sadm_draem
from sadm_jax import main as main_lib
from sadm_jax.models import factory
from sadm_jax.train import loop, sadm, sharding
from sadm_jax.train.checkpoint import Checkpointer, RunError
from sadm_jax.train.runs import open_run, reference_candidates
from tests.helpers import assert_same_run, largest_constant, metric_series, with_data


@pytest.fixture(scope="module")
def data_dir(tiny_data_dir):
  return tiny_data_dir


@pytest.fixture(scope="module")
def cddpm_dir(tiny_cddpm_dir):
  """The session's tiny cDDPM (tests/conftest.py), shared with the evaluation tests."""
  return tiny_cddpm_dir


def _sadm(module, data_dir, cddpm_dir, steps=2):
  c = with_data(module.get_config("tiny"), data_dir)
  c.sadm.cddpm_workdir = cddpm_dir
  c.train.num_steps = c.train.eval_every = c.train.checkpoint_every = steps
  return c


@pytest.fixture(scope="module")
def draem_dir(tiny_sadm_dir):
  """The session's tiny SADM-DRAEM run on that cDDPM (tests/conftest.py)."""
  return tiny_sadm_dir


def test_draem_trains_and_checkpoints_are_sadm(draem_dir, cddpm_dir):
  workdir = draem_dir
  train, val = metric_series(workdir), metric_series(workdir, "val/loss")
  assert [s for s, _ in train] == [1, 2] and [s for s, _ in val] == [2]
  assert all(np.isfinite(v) for _, v in train + val)
  ckpt = Checkpointer(workdir, async_save=False)
  try:
    assert ckpt.saved_meta("latest")["task"] == ckpt.saved_meta("best")["task"] == "sadm"
  finally:
    ckpt.close()
  run = open_run(workdir, expect="sadm")
  config, segnet_vars = run.config, run.variables
  assert config.sadm.mode == "draem" and config.stage == "sadm"
  # Only the SegUnet is optimised and saved: its parameter tree, nothing of the cDDPM.
  assert set(segnet_vars["params"]) == {"encoder", "up_0", "up_1", "up_2", "head"}
  assert segnet_vars["model_state"] == {}
  x = np.zeros((1, 64, 64, 1), np.float32)
  shapes = jax.eval_shape(lambda: factory.build_segnet(config).init(jax.random.key(0), x, x))
  assert (jax.tree.map(lambda a: a.shape, shapes["params"]) ==
          jax.tree.map(lambda a: a.shape, segnet_vars["params"]))
  # The cDDPM is referenced, not copied: the SADM checkpoint holds no cDDPM array, and the
  # referenced run is opened through open_run, bit-identical to stage I.
  import orbax.checkpoint as ocp
  on_disk = ocp.StandardCheckpointer().metadata(
      os.path.join(workdir, "best", str(run.step), "state")).item_metadata
  assert set(on_disk) == {"step", "params", "opt_state", "model_state"}
  assert not jax.tree.leaves(on_disk["model_state"])  # no cDDPM array saved
  ref = run.run_meta["cddpm"]
  assert ref["workdir"] == os.path.abspath(cddpm_dir) and ref["fingerprint"] == run.cddpm.fingerprint
  original = open_run(cddpm_dir, expect="cddpm")
  jax.tree.map(np.testing.assert_array_equal, run.cddpm.variables, original.variables)
  # The saved config is the user's: no derived fact written back into it.
  assert "cddpm_model" not in config.sadm and "base_seed" not in config.sadm


def test_sadm_stopped_and_resumed_is_the_run_never_stopped(data_dir, cddpm_dir, draem_dir,
                                                          tmp_path):
  """The session's SADM-DRAEM run (2 steps) trained here in two starts, 1 step then 1 more: the
  train state at step 2 (SegUnet parameters and Adam state; the frozen cDDPM's reconstructions
  and the DRAEM records come from the step keys and grain's per-record generators) and every
  metrics line are those of the run never stopped, but for the first start's own validation at
  its last step (1), which a run never stopped does not make."""
  c = _sadm(sadm_draem, data_dir, cddpm_dir)  # the session run's config (tests/conftest.py)
  work = str(tmp_path / "sadm")
  for steps in (1, 2):
    c.train.num_steps = steps
    assert main_lib.run_stage(c, work)["step"] == steps
  with open(os.path.join(work, "metrics.jsonl"), encoding="utf-8") as f:
    lines = f.read().splitlines()
  first_val = [ln for ln in lines if ln.startswith('{"step": 1, "val/')]
  assert len(first_val) == 1
  with open(os.path.join(work, "metrics.jsonl"), "w", encoding="utf-8") as f:
    f.writelines(ln + "\n" for ln in lines if ln not in first_val)
  assert_same_run(work, draem_dir, 2, best=False)


def test_frozen_train_mode_drifts_bn_stats_only(data_dir, cddpm_dir):
  """One train step of the Trainer with `sadm.frozen_train_mode`, on one device and a batch of one
  slice: the step's program is this test's own (~30 s of CPU to compile and run); partitioned over
  the 8 devices and run on a batch of 8 it cost ~9 s more, for the same claims."""
  c = _sadm(sadm_draem, data_dir, cddpm_dir)
  c.sadm.frozen_train_mode = True
  c.mesh.num_devices = 1
  task = sadm.sadm_task(c)
  trainer = loop.Trainer(c, task, sharding.make_mesh(c))
  state = trainer.init_state()
  frozen_before = jax.device_get(trainer.frozen)
  before = jax.device_get({"params": state.params, "model_state": state.model_state})
  batch = trainer.device_batch(next(iter(task.train_loader(1, 0, 1))))
  assert batch["image"].shape[0] == 1
  state, metrics = trainer.train_step(state, batch, trainer.train_key, trainer.frozen)
  after = jax.device_get({"params": state.params, "model_state": state.model_state})
  assert np.isfinite(float(metrics["loss"]))
  assert set(after["params"]) == {"encoder", "up_0", "up_1", "up_2", "head"}  # the SegUnet only
  # The frozen cDDPM argument is never changed ...
  jax.tree.map(np.testing.assert_array_equal, frozen_before, jax.device_get(trainer.frozen))
  # ... but its encoder's BatchNorm statistics drift in the state (faithful Q6), starting from
  # the cDDPM's, and the SegUnet learns.
  jax.tree.map(np.testing.assert_array_equal, before["model_state"]["cddpm_batch_stats"],
               frozen_before["batch_stats"])
  drift = jax.tree.map(lambda a, b: not np.array_equal(a, b),
                       before["model_state"]["cddpm_batch_stats"],
                       after["model_state"]["cddpm_batch_stats"])
  assert all(jax.tree.leaves(drift))
  moved = jax.tree.map(lambda a, b: not np.array_equal(a, b), before["params"], after["params"])
  assert any(jax.tree.leaves(moved))


def test_frozen_cddpm_is_an_argument_not_a_constant(data_dir, cddpm_dir):
  """The train step's program does not embed the cDDPM's weights (it takes them as an argument)."""
  task = sadm.sadm_task(_sadm(sadm_draem, data_dir, cddpm_dir))
  c = _sadm(sadm_draem, data_dir, cddpm_dir)
  trainer = loop.Trainer(c, task, sharding.make_mesh(c))
  state = trainer.init_state()
  batch = trainer.device_batch(next(iter(task.train_loader(8, 0, 1))))
  programs = {"train step": trainer.train_step.lower(state, batch, trainer.train_key,
                                                     trainer.frozen).as_text(),
              "init": trainer.init_program.lower(trainer.init_key, trainer.init_inputs).as_text()}
  largest = max(a.size for a in jax.tree.leaves(task.frozen["params"]))
  assert largest > 1000  # bigger than the schedule tables (1000 steps), which are constants
  for name, hlo in programs.items():
    assert largest_constant(hlo) < largest, name


def test_plain_unet_needs_no_cddpm(tiny_reproduction_run):
  """The input-only UNet (`sadm.use_cddpm=False`, no cDDPM workdir) trains and opens without a
  cDDPM: the Table-1 reproduction's `unet_draem-0` member (tests/conftest.py: the CLI, in the
  background), not a training of its own (a plain-UNet train step is ~20 s of CPU to compile)."""
  workdir = os.path.join(tiny_reproduction_run[0], "unet_draem-0")
  train = metric_series(workdir)
  assert train and all(np.isfinite(v) for _, v in train)
  run = open_run(workdir, expect="sadm")
  assert run.config.sadm.mode == "draem" and run.config.sadm.use_cddpm is False
  assert not run.config.sadm.cddpm_workdir and "cddpm" not in run.run_meta
  assert not factory.uses_residual(run.config) and run.cddpm is None
  # input-only decoder: the head sees the 2**wf channels of the last up block, no residual branch
  assert run.variables["params"]["head"]["kernel"].shape[-2] == 2 ** run.config.sadm.segnet_wf


def test_missing_or_wrong_cddpm_workdir_is_a_clear_error(data_dir, draem_dir, tmp_path):
  c = _sadm(sadm_draem, data_dir, "")
  with pytest.raises(ValueError, match="sadm.cddpm_workdir is not set"):
    sadm.sadm_task(c)
  missing = str(tmp_path / "nowhere")
  c.sadm.cddpm_workdir = missing
  with pytest.raises(RunError, match=f"sadm.cddpm_workdir={missing}: not a trained cddpm run"):
    sadm.sadm_task(c)
  assert not os.path.exists(missing)
  c.sadm.cddpm_workdir = draem_dir  # a SADM run is not a cDDPM
  with pytest.raises(RunError, match="'sadm' run, not a 'cddpm' run"):
    sadm.sadm_task(c)
  with pytest.raises(RunError, match="nowhere: not a trained sadm run"):
    open_run(missing, expect="sadm")


def test_not_a_sadm_run(cddpm_dir):
  with pytest.raises(RunError, match="'cddpm' run, not a 'sadm' run"):
    open_run(cddpm_dir, expect="sadm")


def test_changed_or_missing_cddpm_is_refused(data_dir, cddpm_dir, cddpm_8_dir, tmp_path):
  """A SADM run refuses to open when the cDDPM it references changed (retrained) or is gone."""
  import shutil
  own = str(tmp_path / "cddpm")
  shutil.copytree(cddpm_dir, own)
  sadm_dir = str(tmp_path / "sadm")
  result = main_lib.run_stage(_sadm(sadm_draem, data_dir, own), sadm_dir)
  assert result["step"] == 2 and np.isfinite(result["train_loss"]) and result["best_val_loss"] > 0
  assert open_run(sadm_dir).cddpm.workdir == os.path.abspath(own)
  # The cDDPM moved: the run resumes with it at its new place (same step and weights) ...
  moved = str(tmp_path / "cddpm_moved")
  shutil.copytree(own, moved)
  assert main_lib.run_stage(_sadm(sadm_draem, data_dir, moved), sadm_dir)["step"] == 2
  # A run the caller holds is returned instead of read again while it is still the one on disk.
  held = open_run(own, expect="cddpm")
  assert open_run(own, expect="cddpm", opened=[held]) is held
  assert open_run(sadm_dir, opened=[held]).cddpm is held
  # The referenced cDDPM trained further: the session's run of the same config trained to step 8
  # (tests/conftest.py) takes its place, so its best checkpoint changes (as a retrain in place
  # would, without a training of its own here).
  shutil.rmtree(own)
  shutil.copytree(cddpm_8_dir, own)
  assert open_run(own, expect="cddpm", opened=[held]) is not held  # a stale held run is not used
  # The checkpoints still name the old place; the last start (run.json) names the new one, where
  # the recorded weights are.
  assert open_run(sadm_dir).cddpm.workdir == os.path.abspath(moved)
  shutil.rmtree(moved)
  for opened in ((), [held]):
    with pytest.raises(RunError, match="frozen cDDPM it was trained with changed"):
      open_run(sadm_dir, opened=opened)
  # ... but not with another cDDPM (here: the same config trained further, in place).
  with pytest.raises(RunError, match=r"trained with the frozen cDDPM of step 2 .* holds step 8"):
    main_lib.run_stage(_sadm(sadm_draem, data_dir, own), sadm_dir)
  shutil.rmtree(own)
  with pytest.raises(RunError, match="frozen cDDPM this SADM run was trained with is gone"):
    open_run(sadm_dir)


def test_a_sadm_run_moved_with_its_cddpm_opens_there(draem_dir, cddpm_dir, cddpm_8_dir,
                                                     tmp_path):
  """A SADM run records its cDDPM's path relative to itself too: copied (or moved) together, the
  pair opens at the new place; the weights decide (step and fingerprint), so a cDDPM at the
  relative place that is not the one trained with is passed over for the recorded path's."""
  import shutil
  ref = open_run(draem_dir).meta["run"]["cddpm"]
  assert ref["workdir"] == os.path.abspath(cddpm_dir)
  assert ref["relative"] == os.path.relpath(cddpm_dir, draem_dir)
  # The same layout under tmp_path: as deep as the relative path climbs.
  ups = ref["relative"].split(os.sep).count("..")
  moved = tmp_path.joinpath(*[f"d{i}" for i in range(ups)], "sadm")
  moved_cddpm = os.path.normpath(os.path.join(moved, ref["relative"]))
  assert moved_cddpm.startswith(str(tmp_path))
  shutil.copytree(draem_dir, moved)
  shutil.copytree(cddpm_dir, moved_cddpm)
  run = open_run(str(moved))
  assert run.cddpm.workdir == moved_cddpm and run.cddpm.step == ref["step"]
  # Another cDDPM at the relative place (retrained there): the recorded path's is the one.
  shutil.rmtree(moved_cddpm)
  shutil.copytree(cddpm_8_dir, moved_cddpm)
  assert open_run(str(moved)).cddpm.workdir == os.path.abspath(cddpm_dir)


def test_reference_candidates():
  assert reference_candidates("/r/exp/sadm", {"workdir": "/old/exp/cddpm",
                                              "relative": "../cddpm"}) == [
      "/r/exp/cddpm", "/old/exp/cddpm"]
  # never moved: one place; a run recorded before relative paths: the absolute path only
  assert reference_candidates("/r/exp/sadm", {"workdir": "/r/exp/cddpm",
                                              "relative": "../cddpm"}) == ["/r/exp/cddpm"]
  assert reference_candidates("/r/exp/sadm", {"workdir": "/old/cddpm"}) == ["/old/cddpm"]
  assert reference_candidates("/r/exp/sadm", {}) == []


def test_weak_row_ranges():
  rows = sadm.weak_row_ranges
  assert rows("brats", 100) == ((10, 100), (0, 10))
  assert rows("atlas", 175) == ((6, 175), (0, 6))
  assert rows("brats", 40) == ((10, 40), (0, 10))  # reference rows clipped
  assert rows("brats", 11) == ((10, 11), (0, 10))
  assert rows("brats", 3) == ((1, 3), (0, 1))  # too short: hold out >= 1 row, train on the rest
  assert rows("atlas", 5) == ((1, 5), (0, 1))
  assert rows("brats", 30, (5, 30), (0, 5)) == ((5, 30), (0, 5))
  with pytest.raises(ValueError, match="overlap"):
    rows("brats", 30, (0, 30), (0, 5))
  with pytest.raises(ValueError, match="within the 20 rows"):
    rows("brats", 20, (10, 100), None)
  with pytest.raises(ValueError, match=">= 2"):
    rows("atlas", 1)


@pytest.mark.parametrize("module,split",
                         [(sadm_brats, "Brats21_val"), (sadm_atlas, "ATLAS_v2_val")])
def test_weak_supervision_tables(module, split, data_dir):
  from sadm_jax import config as config_lib
  c = config_lib.resolve(_no_cddpm(module, data_dir))
  train, val = sadm.sadm_tables(c)
  names = [f"{split}_{i:03d}" for i in range(3)]  # fake_data: 3 rows per pathological split
  assert val.names == tuple(names[:1]) and train.names == tuple(names[1:])
  assert not set(train.names) & set(val.names)
  task = sadm.sadm_task(c, tables=(train, val))
  batch = next(iter(task.train_loader(8, 0, 1)))
  assert set(np.unique(batch["seg"])) <= {0, 1} and batch["seg"].any()
  assert task.batch_keys == ("image", "seg")


def _no_cddpm(module, data_dir):
  c = with_data(module.get_config("tiny"), data_dir)
  c.sadm.use_cddpm = False
  return c


def test_repeat_seed_is_run_metadata_not_config(data_dir):
  c = _no_cddpm(sadm_atlas, data_dir)
  c.sadm.repeat = 1
  before = c.to_dict()
  task = sadm.sadm_task(c, data=False)
  assert task.seed == task.meta["seed"] == sadm.effective_seed(c.seed, 1) != c.seed
  assert c.to_dict() == before  # the user's config is never changed
  c.sadm.repeat = 0
  assert sadm.sadm_task(c, data=False).seed == c.seed


def test_open_run_reads_meta_and_state_of_one_step_and_needs_params(cddpm_dir, monkeypatch):
  """The state restored is the step whose meta was read; a state without params / model_state
  (not a model's checkpoint) is a one-line RunError naming the workdir."""
  from sadm_jax.train import checkpoint
  real, calls = checkpoint.Checkpointer.restore_saved, []

  def spy(self, which="best", step=None, keys=None):
    calls.append((which, step, keys))
    return real(self, which, step, keys)

  monkeypatch.setattr(checkpoint.Checkpointer, "restore_saved", spy)
  run = open_run(cddpm_dir, expect="cddpm")
  # Only the model is read, not the optimiser state.
  assert calls == [("best", run.step, ("params", "model_state"))] and run.step == run.meta["step"]
  assert set(run.variables) == {"params", "model_state"} and run.variables["model_state"]
  monkeypatch.setattr(checkpoint.Checkpointer, "restore_saved", real)
  import orbax.checkpoint as ocp
  monkeypatch.setattr(ocp.StandardCheckpointHandler, "metadata",
                      lambda self, directory: {"opt_state": {}, "step": 1})
  with pytest.raises(RunError, match=r"cannot be restored: no params / model_state in its saved "
                                     r"state \(keys \['opt_state', 'step'\]\)"):
    open_run(cddpm_dir, expect="cddpm")
