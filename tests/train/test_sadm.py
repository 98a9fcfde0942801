"""Stage II at the tiny config: SADM on a frozen tiny cDDPM (DRAEM and weak supervision), frozen-weight checks."""

import json
import os

import jax
import numpy as np
import pytest

from configs import cddpm as cddpm_config, sadm_atlas, sadm_brats, sadm_draem
from sadm_jax import main as main_lib
from sadm_jax.train import loop, sharding, stage1, stage2
from sadm_jax.train.checkpoint import Checkpointer
from tests.data import fake_data


def _data(c, data_dir):
  c.data.data_dir = data_dir
  c.data.cache_dir = os.path.join(data_dir, "cache")
  c.train.async_checkpoints = False
  return c


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("dd"))
  fake_data.write_data_dir(root, n_ixi=12, n_patho=3)
  return root


@pytest.fixture(scope="module")
def cddpm_dir(data_dir, tmp_path_factory):
  """One tiny cDDPM run shared by every test here."""
  workdir = str(tmp_path_factory.mktemp("cddpm"))
  c = _data(cddpm_config.get_config("tiny"), data_dir)
  c.train.num_steps = c.train.eval_every = c.train.checkpoint_every = 2
  c.optimizer.learning_rate = 2e-3  # as test_stage1's tiny run: its compiled steps are reused
  main_lib.run_stage(c, workdir)
  return workdir


def _sadm(module, data_dir, cddpm_dir, steps=2):
  c = _data(module.get_config("tiny"), data_dir)
  c.sadm.cddpm_workdir = cddpm_dir
  c.train.num_steps = c.train.eval_every = c.train.checkpoint_every = steps
  return c


@pytest.fixture(scope="module")
def draem_dir(data_dir, cddpm_dir, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("sadm"))
  result = main_lib.run_stage(_sadm(sadm_draem, data_dir, cddpm_dir), workdir)
  return workdir, result


def test_draem_trains_and_checkpoints_are_sadm(draem_dir, cddpm_dir):
  workdir, result = draem_dir
  assert np.isfinite(result["train_loss"]) and np.isfinite(result["val_loss"])
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    steps = [r["step"] for r in map(json.loads, f) if "train/loss" in r]
  assert steps == [1, 2]
  ckpt = Checkpointer(workdir, async_save=False)
  try:
    assert ckpt.latest_meta()["task"] == ckpt.best_meta()["task"] == "sadm"
  finally:
    ckpt.close()
  config, segnet_vars = stage2.load_sadm(workdir)
  assert config.sadm.mode == "draem" and config.stage == "sadm"
  # Only the SegUnet is optimised: its parameter tree, nothing of the cDDPM.
  assert set(segnet_vars["params"]) == {"encoder", "up_0", "up_1", "up_2", "head"}
  x = np.zeros((1, 64, 64, 1), np.float32)
  shapes = jax.eval_shape(lambda: stage2.build_segnet(config).init(jax.random.key(0), x, x))
  assert (jax.tree.map(lambda a: a.shape, shapes["params"]) ==
          jax.tree.map(lambda a: a.shape, segnet_vars["params"]))
  # Default (Q6 fixed): the frozen cDDPM inside the SADM checkpoint is bit-identical to stage I.
  _, frozen = stage2.load_sadm_cddpm(workdir)
  _, original = stage1.load_best_variables(cddpm_dir, "cddpm")
  jax.tree.map(np.testing.assert_array_equal, frozen, original)


def test_frozen_train_mode_drifts_bn_stats_only(data_dir, cddpm_dir):
  c = _sadm(sadm_draem, data_dir, cddpm_dir)
  c.sadm.frozen_train_mode = True
  c, frozen = stage2.prepare_sadm(c)
  task = stage2.sadm_task(c, frozen)
  trainer = loop.Trainer(c, task, sharding.make_mesh(c))
  state = trainer.init_state()
  before = jax.device_get({"params": state.params, "model_state": state.model_state})
  batch = trainer.device_batch(next(iter(task.train_loader(8, 0, 1))))
  state, metrics = trainer.train_step(state, batch, trainer.train_key)
  after = jax.device_get({"params": state.params, "model_state": state.model_state})
  assert np.isfinite(float(metrics["loss"]))
  assert set(after["params"]) == {"encoder", "up_0", "up_1", "up_2", "head"}  # the SegUnet only
  # Gradients never reach the cDDPM: its parameters are unchanged ...
  jax.tree.map(np.testing.assert_array_equal, before["model_state"]["cddpm"]["params"],
               after["model_state"]["cddpm"]["params"])
  # ... but its encoder's BatchNorm statistics drift (faithful Q6), and the SegUnet learns.
  drift = jax.tree.map(lambda a, b: not np.array_equal(a, b),
                       before["model_state"]["cddpm"]["batch_stats"],
                       after["model_state"]["cddpm"]["batch_stats"])
  assert all(jax.tree.leaves(drift))
  moved = jax.tree.map(lambda a, b: not np.array_equal(a, b), before["params"], after["params"])
  assert any(jax.tree.leaves(moved))


def test_plain_unet_needs_no_cddpm(data_dir, tmp_path):
  c = _sadm(sadm_draem, data_dir, "")
  c.sadm.use_cddpm = False
  result = main_lib.run_stage(c, str(tmp_path))
  assert np.isfinite(result["train_loss"])
  config, segnet_vars = stage2.load_sadm(str(tmp_path))
  assert not stage2.uses_residual(config)
  assert segnet_vars["params"]["head"]["kernel"].shape[-2] == 2 ** 3  # input-only decoder
  with pytest.raises(ValueError, match="without a cDDPM"):
    stage2.load_sadm_cddpm(str(tmp_path))


def test_missing_or_wrong_cddpm_workdir_is_a_clear_error(data_dir, draem_dir, tmp_path):
  c = _sadm(sadm_draem, data_dir, "")
  with pytest.raises(ValueError, match="sadm.cddpm_workdir is not set"):
    stage2.prepare_sadm(c)
  missing = str(tmp_path / "nowhere")
  c.sadm.cddpm_workdir = missing
  with pytest.raises(FileNotFoundError, match=f"sadm.cddpm_workdir={missing}"):
    stage2.prepare_sadm(c)
  assert not os.path.exists(missing)
  c.sadm.cddpm_workdir = draem_dir[0]  # a SADM run is not a cDDPM
  with pytest.raises(ValueError, match="'sadm' run, not a 'cddpm' run"):
    stage2.prepare_sadm(c)
  with pytest.raises(FileNotFoundError, match="nowhere: no sadm best checkpoint"):
    stage2.load_sadm(missing)


def test_not_a_sadm_run(cddpm_dir):
  with pytest.raises(ValueError, match="'cddpm' run, not a 'sadm' run"):
    stage2.load_sadm(cddpm_dir)


def test_weak_row_ranges():
  rows = stage2.weak_row_ranges
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
  c, _ = stage2.prepare_sadm(_no_cddpm(module, data_dir))
  train, val = stage2.sadm_tables(c)
  names = [f"{split}_{i:03d}" for i in range(3)]  # fake_data: 3 rows per pathological split
  assert val.names == tuple(names[:1]) and train.names == tuple(names[1:])
  assert not set(train.names) & set(val.names)
  task = stage2.sadm_task(c, tables=(train, val))
  batch = next(iter(task.train_loader(8, 0, 1)))
  assert set(np.unique(batch["seg"])) <= {0, 1} and batch["seg"].any()
  assert task.batch_keys == ("image", "seg")


def _no_cddpm(module, data_dir):
  c = _data(module.get_config("tiny"), data_dir)
  c.sadm.use_cddpm = False
  return c


def test_repeat_seed_is_idempotent(data_dir):
  c = _no_cddpm(sadm_atlas, data_dir)
  c.sadm.repeat = 1
  once, _ = stage2.prepare_sadm(c)
  twice, _ = stage2.prepare_sadm(once)
  assert once.seed == twice.seed == stage2.effective_seed(c.seed, 1) != c.seed
  assert once.sadm.base_seed == twice.sadm.base_seed == c.seed
  c.sadm.repeat = 0
  assert stage2.prepare_sadm(c)[0].seed == c.seed
