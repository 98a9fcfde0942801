"""A SADM run and its frozen cDDPM: the noise and schedule it reconstructs with, a fold other than the cDDPM's, and the faithful BatchNorm drift of the frozen encoder."""

import jax
import numpy as np

from configs import sadm_brats, sadm_draem
from sadm_jax.models import factory
from sadm_jax.train import sadm
from tests.helpers import he_random_variables


def test_sadm_reconstructs_with_the_noise_and_schedule_its_cddpm_was_trained_with():
  """A SADM config whose diffusion differs from its frozen cDDPM's (e.g. `faithful=True` on a
  default-trained cDDPM, or another schedule) trains with the cDDPM's noise layout, rounding and
  schedule, as evaluation reconstructs; its noise sharing and ensemble stay its own."""
  import ml_collections

  from configs import cddpm as cddpm_config
  from configs import sadm_draem
  from sadm_jax import config as config_lib
  from sadm_jax.train import sadm as sadm_lib
  given = cddpm_config.get_config("tiny")
  given.faithful = True  # trained with aligned octaves and float16 noise (placeholders resolved)
  given.diffusion.num_timesteps = 500
  saved = ml_collections.ConfigDict(given.to_dict())  # as open_run returns it
  mine = sadm_draem.get_config("tiny")
  mine.diffusion.ensemble_timesteps = (99,)
  mine = config_lib.resolve(mine)
  before = mine.to_dict()
  used = sadm_lib.with_cddpm_diffusion(mine, saved).diffusion
  assert (used.aligned_octaves, used.float16_noise, used.num_timesteps) == (True, True, 500)
  assert used.shared_noise is False and tuple(used.ensemble_timesteps) == (99,)
  assert mine.to_dict() == before  # the user's config is not changed


def test_draem_fold_other_than_its_cddpms_is_warned(caplog):
  """Q17: a SADM run of fold k on a cDDPM of fold j != k is evaluated (and, for DRAEM, validated)
  on IXI_val_fold{k}, which may hold images the cDDPM trained on; the run says so."""
  import logging

  import ml_collections

  from configs import cddpm as cddpm_config
  from sadm_jax import config as config_lib
  saved = ml_collections.ConfigDict(cddpm_config.get_config("tiny").to_dict())  # fold 0
  mine = sadm_draem.get_config("tiny")
  mine.sadm.cddpm_workdir = "/runs/cddpm0"
  with caplog.at_level(logging.WARNING):
    sadm._warn_mismatch(config_lib.resolve(mine), saved)
  assert "fold" not in caplog.text
  mine.data.fold = 3
  with caplog.at_level(logging.WARNING):
    sadm._warn_mismatch(config_lib.resolve(mine), saved)
  assert "data.fold=3 differs from the cDDPM's 0 (/runs/cddpm0)" in caplog.text
  assert "IXI_val_fold3" in caplog.text and "Q17" in caplog.text
  caplog.clear()
  weak = sadm_brats.get_config("tiny")  # trains on Brats21_val, but is evaluated on IXI_val_fold3
  weak.data.fold = 3
  weak.sadm.cddpm_workdir = "/runs/cddpm0"
  with caplog.at_level(logging.WARNING):
    sadm._warn_mismatch(config_lib.resolve(weak), saved)
  assert "data.fold=3 differs" in caplog.text


def test_faithful_drift_updates_bn_on_the_clean_slice_then_the_anomalous_one():
  """Q6 faithful, DRAEM: the reference runs E in training mode on the clean slice (features
  discarded) and then on the anomalous one, so its BatchNorm statistics take both updates per
  step, in that order; weak supervision (one E call) and inference mode take one / none."""
  import jax.numpy as jnp

  from sadm_jax import config as config_lib
  from sadm_jax.models import cddpm as cddpm_lib
  c = sadm_draem.get_config("tiny")
  c.faithful = True
  c.model.encoder.drop_path_rate = 0.0  # batch statistics then do not depend on the keys
  c = config_lib.resolve(c)
  assert sadm.sadm_task(c, data=False).batch_keys == ("image", "seg", "clean")
  cddpm, segnet, res = factory.build_cddpm(c), factory.build_segnet(c), factory.slice_size(c)
  x0 = jnp.zeros((1, res, res, 1))
  k = jax.random.key(0)
  frozen = he_random_variables(cddpm, x0, x0, jnp.zeros((1,), jnp.int32), False)
  params = he_random_variables(segnet, x0, x0)["params"]
  rng = np.random.default_rng(0)
  clean = jnp.asarray(rng.random((2, res, res, 1)), jnp.float32)
  ano = clean.at[:, 8:24, 8:24].set(1.0)
  batch = {"image": ano, "clean": clean, "seg": (ano != clean).astype(jnp.uint8)}
  state = {"cddpm_batch_stats": frozen["batch_stats"]}
  loss_fn = sadm.sadm_loss_fn(c, segnet, cddpm)
  # The model state loss_fn returns, one program each for train and validation. The loss is not
  # read, so the programs leave out the reconstruction and the SegUnet (dead code): ~2 s of
  # compilation instead of 13 for the whole loss_fn twice; the state is the same computation.
  new_state = jax.jit(lambda *args: loss_fn(*args)[1][0], static_argnums=4)
  new = new_state(params, state, batch, k, True, frozen)

  @jax.jit
  def update(stats, x):
    _, upd = cddpm.apply({**frozen, "batch_stats": stats}, x, True,
                         method=cddpm_lib.CDDPM.encode, mutable=["batch_stats"])
    return upd["batch_stats"]

  want = update(update(frozen["batch_stats"], clean), ano)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
               new["cddpm_batch_stats"], want)
  same = new_state(params, state, batch, k, False, frozen)  # validation: no update
  jax.tree.map(np.testing.assert_array_equal, same["cddpm_batch_stats"], frozen["batch_stats"])
