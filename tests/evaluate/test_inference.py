"""Per-volume inference: shapes, determinism, one compilation for many volumes, shared work."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import cddpm as cddpm_config
from configs import evaluate as evaluate_config
from configs import sadm_draem
from sadm_jax import config as config_lib
from sadm_jax.evaluate import inference
from sadm_jax.evaluate import anomaly_map as am
from sadm_jax.evaluate import scoring
from sadm_jax.models import factory
from sadm_jax.utils import xla_flags
from tests.helpers import random_variables

D, H, W = 8, 64, 64  # the tiny working grid, slice-major


@pytest.fixture(scope="module")
def eval_config():
  return config_lib.resolve(evaluate_config.get_config("tiny"))


@pytest.fixture(scope="module")
def models(eval_config):
  """Randomly initialised tiny cDDPM and SegUnet (inference only needs their variables).

  The architectures of the session's tiny cDDPM and SADM-DRAEM runs (tests/conftest.py), so that
  the programs compiled here are those of the session's evaluation (compilation cache hits).
  """
  cfg = config_lib.resolve(cddpm_config.get_config("tiny"))
  model = factory.build_cddpm(cfg)
  x = jnp.zeros((1, H, W, 1))
  # Random variables drawn on the host (no init program to compile); no layer is zero, so x̂
  # depends on the noise (the UNet's real output convolution is zero-initialised).
  variables = random_variables(
      lambda k, *a: model.init({"params": k, "dropout": k}, *a, train=False),
      x, x, jnp.zeros((1,), jnp.int32), seed=0)
  cddpm = inference.cddpm_inference(cfg, variables, eval_config)
  seg_module = inference.build_segnet(config_lib.resolve(sadm_draem.get_config("tiny")),
                                      eval_config.evaluate.dtype)
  assert seg_module.use_residual
  seg_vars = random_variables(seg_module.init, x, x, seed=1)
  return cddpm, inference.SegmentationInference(seg_module, seg_vars)


def test_architecture_groups_and_stacked_variables(models):
  """SegUnets of one architecture share one copy of the network in the per-volume program."""
  seg = models[1]
  x = jnp.zeros((1, H, W, 1))
  other = inference.SegmentationInference(seg.module,
                                          random_variables(seg.module.init, x, x, seed=2))
  input_only = seg.module.clone(use_residual=False)
  plain = inference.SegmentationInference(input_only,
                                          random_variables(input_only.init, x, None, seed=3))
  assert scoring.architecture_groups([seg, plain, other, seg]) == [[0, 2, 3], [1]]
  assert scoring.architecture_groups([plain]) == [[0]]
  assert scoring.stack_variables([seg.variables]) is seg.variables
  stacked = scoring.stack_variables([seg.variables, other.variables])
  for a, b, s in zip(jax.tree.leaves(seg.variables), jax.tree.leaves(other.variables),
                     jax.tree.leaves(stacked)):
    assert s.shape == (2,) + a.shape
    s = np.asarray(s)  # indexed on the host: no slicing program compiled per leaf shape
    np.testing.assert_array_equal(s[0], a)
    np.testing.assert_array_equal(s[1], b)


def _volume(seed: int) -> np.ndarray:
  return np.random.default_rng(seed).uniform(0, 1, (D, H, W)).astype(np.float32)


def _brain() -> np.ndarray:
  d, h, w = np.meshgrid(*[np.linspace(-1, 1, n) for n in (D, H, W)], indexing="ij")
  return (0.6 * d ** 2 + h ** 2 + w ** 2) < 0.7  # [D, H, W]


def _program_volume(b: int) -> tuple[np.ndarray, np.ndarray, int]:
  """Volume b of the per-volume program tests: image, brain mask (both [D, H, W]), noise index."""
  return _volume(20 + b), _brain(), inference.volume_index(f"v{b}")


class _HostReference:
  """`infer_volume` and the host `anomaly_map`s of the per-volume program tests' volumes, each
  computed once for the module (both median paths compare with the same reference; each is a
  cDDPM ensemble and a SegUnet on one volume, ~1 s of CPU)."""

  def __init__(self, cddpm, segnet):
    self.cddpm, self.segnet = cddpm, segnet
    self.inferred: dict = {}  # b -> VolumeInference
    self.maps: dict = {}  # (b, combination) -> A [H, W, D]

  def infer(self, b: int) -> inference.VolumeInference:
    if b not in self.inferred:
      image, _, index = _program_volume(b)
      self.inferred[b] = inference.infer_volume(image, index, self.cddpm, self.segnet)
    return self.inferred[b]

  def anomaly_map(self, b: int, combination: str) -> np.ndarray:
    if (b, combination) not in self.maps:
      image, mask, _ = _program_volume(b)
      inf, hwd = self.infer(b), lambda a: np.transpose(a, (1, 2, 0))
      self.maps[b, combination] = am.anomaly_map(inf.recon, hwd(image), hwd(mask), inf.seg_prob,
                                                 combination=combination, lam=0.5)
    return self.maps[b, combination]


@pytest.fixture(scope="module")
def host_reference(models) -> _HostReference:
  return _HostReference(*models)


def test_shapes_ranges_and_determinism(models):
  cddpm, segnet = models
  image = _volume(0)
  a = inference.infer_volume(image, 7, cddpm, segnet)
  b = inference.infer_volume(image, 7, cddpm, segnet)
  assert a.recon.shape == a.seg_prob.shape == (H, W, D)
  assert a.recon.dtype == a.seg_prob.dtype == np.float32
  assert np.all((a.seg_prob >= 0) & (a.seg_prob <= 1))
  np.testing.assert_array_equal(a.recon, b.recon)  # same (seed, volume index): same noise
  np.testing.assert_array_equal(a.seg_prob, b.seg_prob)
  c = inference.infer_volume(image, 8, cddpm, segnet)
  assert not np.array_equal(a.recon, c.recon)  # another volume index draws other noise
  only = inference.infer_volume(image, 7, cddpm)
  assert only.seg_prob is None
  np.testing.assert_array_equal(only.recon, a.recon)
  rec = cddpm.reconstruct(image, 7)
  assert rec.per_t.shape == (3, D, H, W)
  np.testing.assert_allclose(np.asarray(rec.per_t).mean(0), np.asarray(rec.mean), atol=1e-6)


def test_one_compilation_for_many_volumes(models, host_reference):
  """Three volumes, one trace of each program; their outputs are the per-volume program tests'
  host reference."""
  cddpm, segnet = models
  before = (cddpm.traces, segnet.traces)
  for i in range(3):
    image, _, index = _program_volume(i)
    host_reference.inferred[i] = inference.infer_volume(image, index, cddpm, segnet)
  assert (cddpm.traces, segnet.traces) == (max(before[0], 1), max(before[1], 1)) == (1, 1)


N = 4  # devices of the multi-device per-volume programs below


@pytest.mark.parametrize("on_device_median", [False, True])
def test_volume_program_equals_the_host_anomaly_map(models, host_reference, on_device_median):
  """The one per-volume program = infer_volume + host anomaly_map, per volume; with the host
  median (CPU's path) on 1 and on 4 devices, bit for bit; the on-device median (the accelerators'
  path) on 4 (a third compilation of this program for 1 device would cost ~10 s of CPU). Four
  devices, not the session's 8: the 3 volumes are still padded (to 4), and each padding volume is
  a volume's work (~1 s of CPU). The host reference (`infer_volume`, `anomaly_map`) is computed
  once for both median paths (`host_reference`)."""
  cddpm, segnet = models
  volumes = [_program_volume(b) for b in range(3)]
  images = np.stack([image for image, _, _ in volumes])
  masks = np.stack([mask for _, mask, _ in volumes])
  indices = np.asarray([index for _, _, index in volumes], np.uint32)
  settings = {"lam": 0.5, "median_size": 5, "erode_mask": 0, "min_component_size": 0,
              "residual_mode": "ssim"}
  runs = [("cddpm", "residual", None), ("sadm", "sum", 0), ("weighted", "weighted", 0)]
  out = {}
  meshes = (N,) if on_device_median else (1, N)
  for n in meshes:
    prog = scoring.VolumeProgram(cddpm, [segnet], runs, settings, scoring.local_mesh(n),
                                 on_device_median)
    assert prog.compiler_options is None  # one SegUnet: the process's XLA flags
    # As the evaluation dispatches: batches of one volume per device (3 batches of 1 on 1
    # device; 3 volumes padded to 4 on 4 devices).
    batches = [slice(b, b + 1) for b in range(3)] if n == 1 else [slice(0, 3)]
    host = {}
    for sl in batches:
      pad = lambda a: np.concatenate([a[sl], np.repeat(a[sl][-1:], n - len(a[sl]), 0)])
      got = jax.device_get(prog.dispatch(pad(images), pad(masks), pad(indices)))
      for key, v in got.items():
        host[key] = np.concatenate([host[key], v[:sl.stop - sl.start]]) if key in host \
            else v[:sl.stop - sl.start]
    out[n] = [prog.maps(host, b, masks[b]) for b in range(3)], host
    if on_device_median:  # `program` is what `dispatch` runs: same outputs and shapes
      # (its inputs sharded as `dispatch` puts them: the program's trace is reused)
      put = lambda a: jax.ShapeDtypeStruct((n,) + a.shape[1:], a.dtype,
                                           sharding=prog.batch_sharding)
      shapes = jax.eval_shape(prog.program, prog.variables, put(images), put(masks), put(indices))
      assert {k: v.shape for k, v in shapes.items()} == {k: (n,) + v.shape[1:]
                                                         for k, v in host.items()}
  if 1 in meshes:  # the device count changes neither a volume's outputs nor its maps
    for key in set(out[1][1]) - {"maps"}:
      np.testing.assert_array_equal(out[1][1][key][:3], out[N][1][key][:3], err_msg=key)
    for b in range(3):
      for rid, _, _ in runs:
        np.testing.assert_array_equal(out[1][0][b][rid], out[N][0][b][rid], err_msg=rid)
  for b in range(3):
    inf = host_reference.infer(b)  # inference.infer_volume(images[b], indices[b], cddpm, segnet)
    hwd = lambda a: np.transpose(a, (1, 2, 0))
    for rid, comb, _ in runs:
      want = host_reference.anomaly_map(b, comb)  # am.anomaly_map(…, combination=comb, lam=0.5)
      np.testing.assert_allclose(hwd(out[N][0][b][rid]), want, rtol=0, atol=1e-6)
    np.testing.assert_allclose(hwd(out[N][1]["recon"][b]), inf.recon, rtol=0, atol=1e-6)
    np.testing.assert_allclose(hwd(out[N][1]["prob"][b, 0]), inf.seg_prob, rtol=0, atol=1e-6)
    assert (out[N][0][b]["sadm"][~masks[b]] == 0).all()


def test_two_segunets_on_eight_devices_equal_per_model_inference(models):
  """A program holding two SegUnets of one architecture, over 8 CPU devices, gives each SegUnet's
  own inference probabilities for every volume. Compiled under the package's training-time
  XLA:CPU setting (XLA's convolutions and reductions), 1-6 of 60 results (volume × SegUnet) had
  one depth slice wrong by ~0.22 (jaxlib 0.10.2); the program now compiles with YNNPACK
  convolutions (`VolumeProgram.compiler_options`), which gave 0 of 120."""
  cddpm, segnet = models
  x = jnp.zeros((1, H, W, 1))
  other = inference.SegmentationInference(segnet.module,
                                          random_variables(segnet.module.init, x, x, seed=2))
  images = np.stack([_volume(40 + i) for i in range(8)])
  masks = np.stack([_brain()] * 8)
  indices = np.asarray([inference.volume_index(f"w{i}") for i in range(8)], np.uint32)
  settings = {"lam": 0.5, "median_size": 1, "erode_mask": 0, "min_component_size": 0,
              "residual_mode": "ssim"}
  prog = scoring.VolumeProgram(cddpm, [segnet, other], [("a", "sum", 0), ("b", "sum", 1)],
                               settings, scoring.local_mesh(8), False)
  assert prog.compiler_options == xla_flags.inference_compiler_options("cpu") is not None
  want = {}
  for b in range(8):
    rec = cddpm.reconstruct(images[b], int(indices[b]))
    for k, seg in enumerate((segnet, other)):
      want[b, k] = np.asarray(seg.probability(images[b], rec))
  for _ in range(2):  # the wrong slice came and went between dispatches
    prob = np.asarray(prog.dispatch(images, masks, indices)["prob"])
    for (b, k), w in want.items():
      # 1e-4: the program's convolutions are YNNPACK's, the reference's XLA's (round-off ≤ 3e-6)
      np.testing.assert_allclose(prob[b, k], w, rtol=0, atol=1e-4,
                                 err_msg=f"volume {b}, SegUnet {k}")


def test_jax_median_equals_scipy_bit_for_bit():
  from scipy import ndimage
  rng = np.random.default_rng(0)
  v = rng.random((9, 11, 7)).astype(np.float32)
  v[2:5, 3:6, 1:4] = 0.5  # ties
  got = np.asarray(am._median_jax(jnp.asarray(v), 5))
  want = ndimage.median_filter(v, size=5, mode="reflect")
  assert got.dtype == want.dtype == np.float32
  np.testing.assert_array_equal(got, want)


def test_noise_spec_takes_the_ensemble_from_evaluation_and_shape_from_the_model(eval_config):
  model_cfg = cddpm_config.get_config("tiny")
  e = config_lib.resolve(evaluate_config.get_config("tiny,faithful"))
  e.diffusion.ensemble_timesteps = (99, 499)
  spec = inference.NoiseSpec.from_configs(model_cfg, e)
  assert spec.timesteps == (99, 499) and spec.shared is True
  d = model_cfg.diffusion
  assert (spec.octaves, spec.frequency) == (d.octaves, d.frequency)
  assert inference.NoiseSpec.from_configs(model_cfg, eval_config).shared is False
  assert inference.volume_index("IXI002") == inference.volume_index("IXI002") < 2 ** 31


def test_threshold_baseline_known_answer():
  x = np.zeros((6, 5, 4), np.float32)
  mask = np.zeros(x.shape, bool)
  mask[1:5, 1:4, :] = True
  x[mask] = 0.5
  x[2, 2, 1] = 0.9  # bright lesion
  x[3, 1, 2] = 0.2  # dark lesion
  x[0, 0, 0] = 0.7  # outside the brain: ignored
  a = scoring.anomaly_for("threshold", "residual", x, mask, None, {}, intensity_median=0.5)
  expected = np.zeros(x.shape, np.float32)
  expected[2, 2, 1], expected[3, 1, 2] = 0.4, 0.3
  np.testing.assert_allclose(a, expected, atol=1e-7)
  assert a.dtype == np.float32


def test_predict_maps_an_input_only_unet_as_the_host_does(models, eval_config):
  """Predict's `Predictor.infer` (the per-volume program, two volumes on two devices) for an
  input-only UNet (no cDDPM in the program, combination 'segmentation') = its probability
  through the host `anomaly_map`, volume by volume."""
  from sadm_jax.evaluate import predictor
  seg = models[1].module.clone(use_residual=False)
  x = jnp.zeros((1, H, W, 1))
  plain = inference.SegmentationInference(seg, random_variables(seg.init, x, None, seed=3))
  pred = predictor.Predictor(eval_config, "unet", "segmentation", "test", segnet=plain)
  hwd = lambda a: np.transpose(a, (1, 2, 0))
  volumes = [(hwd(_volume(30 + i)), hwd(_brain()), i) for i in range(2)]
  got = pred.infer(volumes, scoring.local_mesh(2))
  settings = scoring.map_settings(eval_config)
  for (image, brain, index), a in zip(volumes, got):
    want = scoring.anomaly_for("unet", "segmentation", image, brain,
                               inference.infer_volume(np.transpose(image, (2, 0, 1)), index, None,
                                                      plain), settings)
    assert a.shape == want.shape == (H, W, D) and (a > 0).any()
    np.testing.assert_allclose(a, want, rtol=0, atol=1e-6)
