"""The shipped stage configs give the paper's numbers (METHOD §1–§4) and the networks the factory builds from them have the reference's parameter counts."""

import jax.numpy as jnp
import pytest

from configs import cddpm, evaluate, sadm_atlas, sadm_brats, sadm_draem, spark_pretrain
from sadm_jax import config as config_lib
from sadm_jax.models import factory
from tests.helpers import abstract_variables, param_count

STAGES = {"spark": spark_pretrain, "cddpm": cddpm, "sadm_draem": sadm_draem,
          "sadm_brats": sadm_brats, "sadm_atlas": sadm_atlas, "evaluate": evaluate}
# Shared by every stage (METHOD §1, §2.3, §3.2–§3.4, §3.7, §3.9, §4.1–§4.2).
COMMON = {
    "seed": 3141, "faithful": False, "data.modality": "t1",
    "data.preprocess.crop_size": (192, 192, 100), "data.preprocess.downsample": 2,
    "data.preprocess.percentiles": (1.0, 99.0), "data.preprocess.curvature_flow": True,
    "data.preprocess.cf_time_step": 0.125, "data.preprocess.cf_iterations": 3,
    "model.dtype": "float32",
    "model.unet.model_channels": 128, "model.unet.channel_mult": (1, 2, 2),
    "model.unet.num_res_blocks": 3, "model.unet.attention_resolutions": (),
    "model.unet.num_head_channels": 64, "model.unet.num_groups": 32,
    "model.encoder.cond_dim": 512, "model.encoder.drop_path_rate": 0.05,
    "model.encoder.stage_sizes": (3, 4, 6, 3), "model.encoder.width": 64,
    "model.spark.mask_ratio": 0.65, "model.spark.decoder_width": 512,
    "diffusion.num_timesteps": 1000, "diffusion.cosine_s": 0.008, "diffusion.max_beta": 0.999,
    "diffusion.noise": "simplex", "diffusion.octaves": 6, "diffusion.persistence": 0.8,
    "diffusion.frequency": 64.0, "diffusion.p2_gamma": 0.0,
    "diffusion.ensemble_timesteps": (249, 499, 749),
    "sadm.segnet_wf": 6, "sadm.loss": "bce", "sadm.deep_supervision": False,
    "sadm.use_residual": True, "sadm.use_cddpm": True, "anomaly.p_anomalous": 1.0,
    "evaluate.residual_mode": "ssim", "evaluate.median_size": 5, "evaluate.erode_mask": 0,
    "evaluate.min_component_size": 0, "evaluate.combination": "sum",
    "train.batch_size": 32, "optimizer.grad_clip_norm": 0.0,
}
# Per stage (METHOD §1 table, §3.1, §3.5, §3.8).
TRAINING = {
    "spark": {"stage": "spark", "optimizer.name": "adamw", "optimizer.learning_rate": 1e-4,
              "optimizer.weight_decay": 0.05, "optimizer.b1": 0.9, "optimizer.b2": 0.95,
              "optimizer.eps": 1e-8, "train.num_epochs": 1200, "train.num_steps": 0,
              "data.augment": False},
    "cddpm": {"stage": "cddpm", "optimizer.name": "adam", "optimizer.learning_rate": 1e-4,
              "optimizer.weight_decay": 0.0, "optimizer.b1": 0.9, "optimizer.b2": 0.999,
              "optimizer.eps": 1e-8, "train.num_epochs": 1200, "train.num_steps": 0,
              "data.augment": True},
    **{f"sadm_{mode}": {"stage": "sadm", "sadm.mode": mode, "optimizer.name": "adam",
                        "optimizer.learning_rate": 5e-5, "optimizer.weight_decay": 0.0,
                        "optimizer.b1": 0.9, "optimizer.b2": 0.999, "optimizer.eps": 1e-8,
                        "train.num_epochs": 600, "train.num_steps": 0, "data.augment": True}
       for mode in ("draem", "brats", "atlas")},
    "evaluate": {"stage": "evaluate"},
}
# config.faithful=True: the reference's behaviour for every F item (METHOD §5).
FAITHFUL = {"data.clean_splits": False, "data.slice_sampling": "uniform", "data.augment_3d": True,
            "diffusion.shared_noise": True, "diffusion.aligned_octaves": True,
            "diffusion.float16_noise": True, "sadm.frozen_train_mode": True,
            "anomaly.faithful_uint8_wrap": True, "evaluate.threshold_method": "bisection",
            "evaluate.faithful_metrics": True}


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_configs_give_the_paper_numbers(name):
  c = config_lib.resolve(STAGES[name].get_config())
  expected = {**COMMON, **TRAINING[name]}
  got = {k: config_lib.at(c, k) for k in expected}
  assert {k: v for k, v in got.items() if v != expected[k]} == {}
  assert factory.slice_size(c) == 96
  c.faithful = True
  for k in FAITHFUL:  # placeholders, filled from `faithful`
    node, field = k.rsplit(".", 1)
    config_lib.at(c, node)[field] = None
  assert {k: config_lib.at(config_lib.resolve(c), k) for k in FAITHFUL} == FAITHFUL


def test_networks_built_from_the_paper_configs_have_the_reference_parameter_counts():
  """METHOD §3: E 24,550,848, UNet 44,068,481, cDDPM 68,619,329, S 16,736,705 (SADM total
  85,356,034), SparK 37,964,305 — built by the factory from the shipped configs (shapes only)."""
  x = jnp.zeros((2, 96, 96, 1))
  t = jnp.zeros((2,), jnp.int32)
  c = config_lib.resolve(cddpm.get_config())
  cddpm_params = abstract_variables(factory.build_cddpm(c), x, x, t, False)["params"]
  assert param_count(cddpm_params["encoder"]) == 24_550_848
  assert param_count(cddpm_params["unet"]) == 44_068_481
  assert param_count(cddpm_params) == 68_619_329
  s = config_lib.resolve(sadm_draem.get_config())
  segnet = abstract_variables(factory.build_segnet(s), x, x)["params"]
  assert param_count(segnet) == 16_736_705
  sadm_cddpm = abstract_variables(factory.build_cddpm(s), x, x, t, False)["params"]
  assert param_count(sadm_cddpm) + param_count(segnet) == 85_356_034
  p = config_lib.resolve(spark_pretrain.get_config())
  active = jnp.ones((2, 3, 3), bool)
  assert param_count(abstract_variables(factory.build_spark(p), x, active, False)["params"]) \
      == 37_964_305


@pytest.mark.parametrize("name,volumes,steps", [
    ("cddpm", 387, 14_400), ("spark", 387, 14_400), ("sadm_draem", 387, 7_200),
    ("sadm_brats", 90, 1_800), ("sadm_atlas", 169, 3_600)])
def test_training_length_is_the_reference_step_count(name, volumes, steps):
  """METHOD §1: 1200 epochs × 12 steps (IXI, drop_last: the partial batch is dropped), SADM 600
  epochs: DRAEM 12, BraTS 3 (90 = 32 + 32 + 26), ATLAS 6 steps per epoch (drop_last=False: the
  partial batch is a step). Every step here is a full batch of the endless shuffled stream."""
  from sadm_jax.train import loop, sadm
  c = config_lib.resolve(STAGES[name].get_config())
  partial = c.stage == "sadm" and c.sadm.mode in sadm.WEAK_SPLITS
  assert loop.total_steps(c, volumes, keep_partial_batch=partial) == steps
  c.sadm.use_cddpm = False  # shapes only: the task's own partial-batch rule
  if c.stage == "sadm":
    assert sadm.sadm_task(c, data=False).keep_partial_batch is partial
