"""Out-of-range `--config.a.b=v` values are refused up front as one line naming the setting (validate.check_static)."""

import os
import re

import pytest

from configs import cddpm, demo, evaluate, predict, prepare, sadm_draem, spark_pretrain
from sadm_jax import config as config_lib
from sadm_jax import validate, validate_paths

CONFIGS = {"cddpm": cddpm, "demo": demo, "evaluate": evaluate, "predict": predict,
           "prepare": prepare, "sadm": sadm_draem, "spark": spark_pretrain}


def _check(stage: str, overrides: dict, tmp_path):
  c = CONFIGS[stage].get_config()
  c.data.data_dir = str(tmp_path)
  c.sadm.cddpm_workdir = str(tmp_path)
  for key, value in overrides.items():
    node, _, field = key.rpartition(".")
    target = c
    for part in node.split(".") if node else ():
      target = target[part]
    target[field] = value
  return validate.check_static(c, config_lib.STAGES)


@pytest.mark.parametrize("stage,overrides,expected", [
    # evaluated timesteps index the T-step schedule: out of range they were clipped silently
    ("evaluate", {"diffusion.ensemble_timesteps": (249, 1000)},
     "--config.diffusion.ensemble_timesteps=(249, 1000) must be 1 or more timesteps in "
     "[0, 999] (diffusion.num_timesteps=1000)"),
    ("predict", {"diffusion.ensemble_timesteps": (-1,)},
     "--config.diffusion.ensemble_timesteps=(-1,) must be 1 or more timesteps in [0, 999]"),
    ("evaluate", {"diffusion.ensemble_timesteps": ()},
     "--config.diffusion.ensemble_timesteps=() must be 1 or more timesteps"),
    ("evaluate", {"diffusion.num_timesteps": 0}, "--config.diffusion.num_timesteps=0 must be > 0"),
    ("cddpm", {"diffusion.octaves": 0}, "--config.diffusion.octaves=0 must be >= 1"),
    ("cddpm", {"diffusion.frequency": 0.0}, "--config.diffusion.frequency=0.0 must be > 0"),
    ("cddpm", {"diffusion.persistence": -0.8}, "--config.diffusion.persistence=-0.8 must be > 0"),
    ("cddpm", {"diffusion.max_beta": 1.5}, "--config.diffusion.max_beta=1.5 must be in (0, 1]"),
    ("cddpm", {"diffusion.cosine_s": -0.1}, "--config.diffusion.cosine_s=-0.1 must be >= 0"),
    ("cddpm", {"diffusion.p2_gamma": -1.0}, "--config.diffusion.p2_gamma=-1.0 must be >= 0"),
    ("cddpm", {"model.encoder.drop_path_rate": 1.0},
     "--config.model.encoder.drop_path_rate=1.0 must be in [0, 1)"),
    ("spark", {"model.encoder.drop_path_rate": -0.05},
     "--config.model.encoder.drop_path_rate=-0.05 must be in [0, 1)"),
    ("cddpm", {"model.encoder.cond_dim": 0}, "--config.model.encoder.cond_dim=0 must be > 0"),
    ("cddpm", {"model.encoder.stage_sizes": (3, 4)},
     "--config.model.encoder.stage_sizes=(3, 4) must be 4 block counts >= 1"),
    ("cddpm", {"model.unet.num_res_blocks": 0},
     "--config.model.unet.num_res_blocks=0 must be >= 1"),
    ("cddpm", {"model.unet.channel_mult": ()},
     "--config.model.unet.channel_mult=() must be 1 or more multipliers >= 1"),
    ("cddpm", {"model.unet.num_head_channels": 48},
     "--config.model.unet.num_head_channels=48 must divide the 256 channels of the middle "
     "block's attention"),
    # the reference's (3, 6, 12) matched no downsample factor, so nothing attended (Q2)
    ("cddpm", {"model.unet.attention_resolutions": (3, 6, 12)},
     "--config.model.unet.attention_resolutions=(3, 6, 12) must be downsample factors of the "
     "UNet's levels (1, 2, 4); 3, 6, 12 match none (Q2)"),
    ("cddpm", {"model.unet.attention_resolutions": (1,), "model.unet.num_head_channels": 256},
     "--config.model.unet.num_head_channels=256 must divide the 128 channels"),
    ("sadm", {"sadm.segnet_wf": -1}, "--config.sadm.segnet_wf=-1 must be >= 0"),
    ("sadm", {"anomaly.p_anomalous": 1.5}, "--config.anomaly.p_anomalous=1.5 must be in [0, 1]"),
    ("evaluate", {"evaluate.lam": 1.5}, "--config.evaluate.lam=1.5 must be in [0, 1]"),
    # evaluated twice: twice the work, and the report's mean ± std over the copies
    ("evaluate", {"evaluate.test_sets": ("Brats21", "WMH", "Brats21")},
     "--config.evaluate.test_sets=('Brats21', 'WMH', 'Brats21') lists 'Brats21' more than once"),
    ("evaluate", {"evaluate.methods": ("threshold", "threshold")},
     "--config.evaluate.methods=('threshold', 'threshold') lists 'threshold' more than once"),
    ("evaluate", {"evaluate.median_size": -5}, "--config.evaluate.median_size=-5 must be >= 0"),
    ("evaluate", {"evaluate.erode_mask": -1}, "--config.evaluate.erode_mask=-1 must be >= 0"),
    ("evaluate", {"evaluate.min_component_size": -1},
     "--config.evaluate.min_component_size=-1 must be >= 0"),
    ("cddpm", {"data.fold": -1}, "--config.data.fold=-1 must be >= 0"),
    # was '.../splits/IXI_train_fold5.csv: split file not found', after JAX and the data loaded
    ("cddpm", {"data.fold": 5}, "--config.data.fold=5 must be < 5 (the IXI folds: "
     "IXI_train_fold0..4)"),
    # one string, not a tuple: was "unknown split name 'IXI_test,WMH_val'", naming no setting
    ("prepare", {"data.splits": ("IXI_test,WMH_val",)},
     "--config.data.splits has unknown split(s) ['IXI_test,WMH_val']; expected a subset of "
     "IXI_train_fold0, "),
    # grain's "Seed should be positive 32-bit integer." named no setting, after the data loaded
    ("cddpm", {"seed": -1}, "--config.seed=-1 must be in [0, 2**32 - 1]"),
    ("sadm", {"seed": 2 ** 32}, "--config.seed=4294967296 must be in [0, 2**32 - 1]"),
    ("cddpm", {"data.loader_workers": -1},
     "--config.data.loader_workers=-1 must be >= 0 (0 = in this process)"),
    ("sadm", {"mesh.fsdp_min_size": -1}, "--config.mesh.fsdp_min_size=-1 must be >= 0"),
    # a fractional crop was truncated (100.5 -> 100) when the preprocessing chain was built
    ("cddpm", {"data.preprocess.crop_size": (192, 192, 100.5)},
     "--config.data.preprocess: crop_size must be 3 positive ints, got (192, 192, 100.5)"),
    ("cddpm", {"optimizer.b1": 1.0}, "--config.optimizer.b1=1.0 must be in [0, 1)"),
    ("spark", {"optimizer.b2": -0.95}, "--config.optimizer.b2=-0.95 must be in [0, 1)"),
    ("cddpm", {"optimizer.eps": -1e-8}, "--config.optimizer.eps=-1e-08 must be >= 0"),
    ("spark", {"optimizer.weight_decay": -0.05},
     "--config.optimizer.weight_decay=-0.05 must be >= 0"),
    # Adam has no weight decay here: the value was ignored without a word
    ("cddpm", {"optimizer.weight_decay": 0.05},
     "--config.optimizer.weight_decay=0.05 is not used by optimizer.name='adam'"),
    ("cddpm", {"optimizer.grad_clip_norm": -1.0},
     "--config.optimizer.grad_clip_norm=-1.0 must be >= 0 (0 = no clipping)"),
    # 3×3 patches at 96 px: 0.95 would leave round(9 × 0.05) = 0 patches visible, 0.05 hide none
    ("spark", {"model.spark.mask_ratio": 0.95},
     "--config.model.spark.mask_ratio=0.95 leaves 0 of the 3x3 patches visible"),
    ("spark", {"model.spark.mask_ratio": 0.05},
     "--config.model.spark.mask_ratio=0.05 leaves 9 of the 3x3 patches visible"),
    # one string ('Brats21,WMH' is one set's name): the tuple meant, as data.splits says
    ("evaluate", {"evaluate.test_sets": ("Brats21,WMH",)},
     "--config.evaluate.test_sets has unknown set(s) ['Brats21,WMH']; expected a subset of "
     "'Brats21', 'ATLAS_v2', 'MSLUB', 'WMH', 'DRAEM', as a tuple: "
     "--config.evaluate.test_sets=\"('Brats21', 'WMH')\""),
    ("evaluate", {"evaluate.methods": ("cddpm, sadm",)},
     "--config.evaluate.methods has unknown method(s) ['cddpm, sadm']; expected a subset of "
     "'threshold', 'cddpm', 'sadm', as a tuple: --config.evaluate.methods=\"('cddpm', 'sadm')\""),
    # the demo pretrains SparK first: the mask ratio was checked for stage spark only
    ("demo", {"demo.spark_steps": 2, "model.spark.mask_ratio": 0.95},
     "--config.model.spark.mask_ratio=0.95 leaves 0 of the "),
    ("spark", {"model.spark.decoder_width": 16},
     "--config.model.spark.decoder_width=16 must be >= 32"),
    # inf passed every `> 0` check: a learning rate of inf trained to a NaN loss at step 2
    ("cddpm", {"optimizer.learning_rate": float("inf")},
     "--config.optimizer.learning_rate=inf must be finite (not NaN or ±Inf)"),
    ("cddpm", {"diffusion.persistence": float("-inf")},
     "--config.diffusion.persistence=-inf must be finite"),
    ("evaluate", {"evaluate.lam": float("nan")}, "--config.evaluate.lam=nan must be finite"),
    ("cddpm", {"data.preprocess.percentiles": (1.0, float("inf"))},
     "--config.data.preprocess.percentiles=(1.0, inf) must be finite"),
    # the models refused these grids only after the data were preprocessed, naming no setting
    ("cddpm", {"data.preprocess.crop_size": (130, 130, 16)},
     "--config.data.preprocess: stage cddpm needs slices whose sides are multiples of 32 (its "
     "ResNet-50 encoder's stride), got 65x65 (crop_size 130x130 / downsample 2)"),
    ("sadm", {"data.preprocess.crop_size": (160, 160, 16)},
     "--config.data.preprocess: stage sadm needs slices whose sides are multiples of 32 (the "
     "frozen cDDPM's ResNet-50 encoder's stride), got 80x80"),
    ("sadm", {"data.preprocess.crop_size": (136, 136, 16), "sadm.use_cddpm": False},
     "--config.data.preprocess: stage sadm needs slices whose sides are multiples of 8 (its "
     "SegUnet's 3 downsamplings), got 68x68"),
    # predict cut its scans into batches of -1: none was predicted, and it exited 0
    ("predict", {"mesh.num_devices": -1}, "--config.mesh.num_devices=-1 must be >= 0 (0 = all)"),
    ("evaluate", {"mesh.num_devices": -2}, "--config.mesh.num_devices=-2 must be >= 0 (0 = all)"),
])
def test_out_of_range_values_are_refused_naming_the_setting(stage, overrides, expected, tmp_path):
  with pytest.raises(validate.ConfigError) as e:
    _check(stage, overrides, tmp_path)
  assert str(e.value).startswith(expected), str(e.value)
  assert "\n" not in str(e.value)


@pytest.mark.parametrize("stage", sorted(CONFIGS))
def test_the_shipped_configs_and_the_edges_of_each_range_pass(stage, tmp_path):
  _check(stage, {}, tmp_path)
  _check(stage, {"diffusion.ensemble_timesteps": (0, 999), "model.encoder.drop_path_rate": 0.0,
                 "evaluate.lam": 1.0, "evaluate.median_size": 0, "anomaly.p_anomalous": 0.0,
                 "optimizer.eps": 0.0, "diffusion.cosine_s": 0.0,
                 "model.unet.attention_resolutions": (1, 2, 4), "data.fold": 4,
                 "data.splits": ("IXI_test", "WMH_val")}, tmp_path)


def test_evaluated_timesteps_must_lie_in_the_cddpm_s_own_schedule():
  """The evaluation's timesteps index the schedule the cDDPM was trained with (its saved
  `diffusion.num_timesteps`), which the evaluation config cannot know up front."""
  from sadm_jax.evaluate.inference import NoiseSpec
  model = cddpm.get_config("tiny")
  model.diffusion.num_timesteps = 500
  ev = config_lib.resolve(evaluate.get_config("tiny"))
  with pytest.raises(ValueError, match=r"^--config.diffusion.ensemble_timesteps=\(249, 499, 749\) "
                     r"must lie in \[0, 499\]: the cDDPM was trained with "
                     r"diffusion.num_timesteps=500$"):
    NoiseSpec.from_configs(model, ev)
  ev.diffusion.ensemble_timesteps = (249, 499)
  assert NoiseSpec.from_configs(model, ev).timesteps == (249, 499)


def test_a_mesh_over_several_processes_takes_an_equal_share_of_each():
  """`mesh.num_devices` below the device total of several processes must divide among them
  (`sharding.make_mesh`); refused up front, before any process starts its stage."""
  c = cddpm.get_config("tiny")
  c.train.batch_size = 12
  c.mesh.num_devices = 3
  with pytest.raises(validate.ConfigError, match=r"--config.mesh.num_devices=3: a mesh over 2 "
                                                 r"processes takes the same number of devices"):
    validate.check_mesh(c, device_count=4, process_count=2)
  validate.check_mesh(c, device_count=3, process_count=1)  # one process: any count
  c.mesh.num_devices = 2
  validate.check_mesh(c, device_count=4, process_count=2)  # one of each
  c.mesh.num_devices = 0
  validate.check_mesh(c, device_count=4, process_count=2)  # all


def test_the_demo_and_the_reproduction_take_the_cddpm_s_grid(tmp_path):
  """Both train a cDDPM on their grid: refused up front, not after building and preparing the
  cohort."""
  import importlib
  for name in ("demo", "reproduce"):
    c = importlib.import_module(f"configs.{name}").get_config("tiny")
    c.demo.root = str(tmp_path / "cohort")
    validate.check_static(c, config_lib.STAGES, str(tmp_path / "w"))
    c.data.preprocess.crop_size = (130, 130, 16)
    with pytest.raises(validate.ConfigError, match=rf"^--config.data.preprocess: stage {name} "
                                                   r"needs slices whose sides are multiples of 32"):
      validate.check_static(c, config_lib.STAGES, str(tmp_path / "w"))


def test_the_grid_multiples_follow_the_models():
  from sadm_jax.models import segnet
  assert segnet.SegUnet.depth == validate.SEGNET_DEPTH
  c = cddpm.get_config()
  c.model.unet.channel_mult = (1,) * 7  # 6 halvings: 64 beats the encoder's 32
  assert validate._grid_multiple(c) == (64, "its UNet's 6 downsamplings")
  c = sadm_draem.get_config()
  c.sadm.use_cddpm = False
  c.data.preprocess.crop_size = (144, 144, 16)  # 72 = 9 x 8: the SegUnet alone takes it
  validate.check_preprocess(c)


def test_paths_the_shell_left_unexpanded_or_empty_are_refused(tmp_path, monkeypatch):
  """bash expands '~' only at the start of a word: `--workdir=~/runs/x` arrived as is and made a
  folder named '~' in the current directory; `--config.data.data_dir=~/data` was 'no such
  directory'. An empty --workdir was 'not writable: No such file or directory'."""
  monkeypatch.setenv("HOME", "/home/me")
  c = cddpm.get_config()
  c.data.data_dir = str(tmp_path)
  with pytest.raises(validate.ConfigError, match=r"^--workdir=~/runs/x: the shell does not expand "
                                                 r"'~' after '='; give the full path \(e\.g\. "
                                                 r"/home/me/runs/x\)$"):
    validate.check_static(c, config_lib.STAGES, "~/runs/x")
  for workdir in ("", " "):
    with pytest.raises(validate.ConfigError, match=r"^--workdir is empty"):
      validate.check_static(c, config_lib.STAGES, workdir)
  with pytest.raises(validate.ConfigError, match=r"^--config.predict.output is empty"):
    validate_paths.check_dir_path("", "--config.predict.output")
  c.data.data_dir = "~/data"
  with pytest.raises(validate.ConfigError, match=r"^--config.data.data_dir=~/data: the shell"):
    validate.check_static(c, config_lib.STAGES, str(tmp_path / "w"))
  p = predict.get_config()
  p.predict.input = f"{tmp_path},~/b.nii.gz"
  with pytest.raises(validate.ConfigError, match=r"^--config.predict.input=.*,~/b.nii.gz: the "
                                                 r"shell .*\(e\.g\. /home/me/b\.nii\.gz\)$"):
    validate.check_static(p, config_lib.STAGES, str(tmp_path / "w"))
  e = evaluate.get_config()
  e.data.data_dir = str(tmp_path)
  e.evaluate.sadm_workdirs = (str(tmp_path), "~/s1")
  with pytest.raises(validate.ConfigError, match=r"^--config.evaluate.sadm_workdirs=~/s1: "):
    validate.check_static(e, config_lib.STAGES, str(tmp_path / "w"))


@pytest.mark.parametrize("name,key,value,expected", [
    # built the demo cohort (and prepared it) first, then stopped at the first stage reading it
    ("reproduce", "reproduce.repeats", 0, "--config.reproduce.repeats=0 must be in [1, 5]"),
    # repeat k trains on IXI fold k: was refused after the cohort, as 'member cddpm-5:
    # --config.data.fold=5 must be < 5', a setting the user never gave
    ("reproduce", "reproduce.repeats", 6, "--config.reproduce.repeats=6 must be in [1, 5] (repeat "
     "k trains on the IXI fold k: IXI_train_fold0..4)"),
    ("reproduce", "demo.cddpm_steps", -5, "--config.demo.cddpm_steps=-5 must be >= 1"),
    ("demo", "demo.sadm_steps", 0, "--config.demo.sadm_steps=0 must be >= 1"),
    # a negative SparK budget was taken for 0 (no pretraining) without a word
    ("demo", "demo.spark_steps", -1, "--config.demo.spark_steps=-1 must be >= 0"),
    ("reproduce", "demo.cddpm_learning_rate", 0.0,
     "--config.demo.cddpm_learning_rate=0.0 must be > 0"),
    ("demo", "demo.sadm_learning_rate", -1e-3, "--config.demo.sadm_learning_rate=-0.001 must be"),
    ("demo", "demo.seed", -1, "--config.demo.seed=-1 must be >= 0"),  # "expected non-negative integer"
])
def test_demo_and_reproduce_budgets_are_refused_before_the_cohort(name, key, value, expected):
  import importlib
  c = importlib.import_module(f"configs.{name}").get_config("tiny")
  section, field = key.split(".")
  c[section][field] = value
  with pytest.raises(validate.ConfigError, match="^" + re.escape(expected)):
    validate.check_values(c, config_lib.STAGES)
  c[section][field] = 0 if key in ("demo.spark_steps", "demo.seed") else (
      1 if "steps" in field or "repeats" in field else 1e-3)
  validate.check_values(c, config_lib.STAGES)
  c.demo.spark_steps, c.demo.spark_learning_rate = 0, 0.0  # not read without SparK
  validate.check_values(c, config_lib.STAGES)


@pytest.mark.parametrize("name", ["demo", "reproduce"])
@pytest.mark.parametrize("key,value,expected", [
    ("train.batch_size", 0, "--config.train.batch_size=0 must be > 0"),
    ("optimizer.b1", 2.0, "--config.optimizer.b1=2.0 must be in [0, 1)"),
    ("optimizer.weight_decay", 0.1, "--config.optimizer.weight_decay=0.1 is not used by "
     "optimizer.name='adam'"),  # was: trained without decay, without a word
    ("model.unet.num_groups", 5, "--config.model.unet.model_channels=16 is not divisible by "
     "num_groups=5 (GroupNorm)"),
])
def test_the_demo_and_the_reproduction_check_the_training_values_they_train_with(
    name, key, value, expected):
  """Were checked by the training stages only: the demo trained with them (a silent no-decay
  Adam, a diverging b1); the reproduction refused them after building its cohort."""
  import importlib
  c = importlib.import_module(f"configs.{name}").get_config("tiny")
  section, field = key.rsplit(".", 1)
  config_lib.at(c, section)[field] = value
  with pytest.raises(validate.ConfigError, match="^" + re.escape(expected)):
    validate.check_values(c, config_lib.STAGES)
  c = importlib.import_module(f"configs.{name}").get_config("tiny")
  c.train.num_steps, c.optimizer.learning_rate = -1, 0.0  # the budgets (demo.*) replace these
  validate.check_values(c, config_lib.STAGES)


@pytest.mark.parametrize("name", ["demo", "reproduce"])
def test_the_demo_and_the_reproduction_check_the_batch_against_the_devices(name, tmp_path,
                                                                          monkeypatch):
  """Were left to the first training, after the cohort was built."""
  import importlib

  import jax
  c = importlib.import_module(f"configs.{name}").get_config("tiny")
  c.train.batch_size = 5
  monkeypatch.setattr(jax, "device_count", lambda: 2)
  with pytest.raises(validate.ConfigError, match=r"^--config.train.batch_size=5 \(global\) is not "
                                                 r"divisible by the 2 device\(s\) of the mesh$"):
    validate.validate(c, str(tmp_path / "w"), config_lib.STAGES)
  assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("key,value,expected", [
    ("methods", ("threshold", "sadm"), "--config.evaluate.methods=('threshold', 'sadm') lacks "
     "'cddpm': the paper's claims (stage reproduce) need evaluate.methods 'cddpm', 'sadm'"),
    ("test_sets", ("Brats21", "DRAEM"), "--config.evaluate.test_sets=('Brats21', 'DRAEM') lacks "
     "'ATLAS_v2', 'WMH': the paper's claims (stage reproduce) need evaluate.test_sets 'Brats21', "
     "'ATLAS_v2', 'WMH'"),
])
def test_a_reproduction_without_the_rows_its_claims_compare_is_refused(key, value, expected):
  """Was: every member trained and evaluated, then each claim 'does NOT hold' on n/a numbers."""
  from configs import reproduce
  c = reproduce.get_config("tiny")
  c.evaluate[key] = value
  with pytest.raises(validate.ConfigError, match="^" + re.escape(expected) + "$"):
    validate.check_values(c, config_lib.STAGES)
  c.stage = "evaluate"  # an evaluation may report any subset
  validate.check_values(c, config_lib.STAGES)


@pytest.mark.parametrize("names", [("encoder,unet",), (), ("encoder", "decoder")])
def test_describe_refuses_model_names_it_cannot_describe(names):
  """Was: 'unknown model name ...' once JAX had started, and () an empty table with exit 0."""
  from configs import cddpm
  c = cddpm.get_config("tiny")
  c.stage, c.model.names = "describe", names
  with pytest.raises(validate.ConfigError, match="^" + re.escape(
      f"--config.model.names={names!r} must name 1 or more of 'encoder', 'unet', 'spark', "
      "'segnet', as a tuple: --config.model.names=\"('encoder', 'unet')\"") + "$"):
    validate.check_values(c, config_lib.STAGES)
  from sadm_jax import describe
  c.model.names = validate.MODEL_NAMES  # every name it accepts, describe knows
  assert tuple(describe.model_specs(c)) == validate.MODEL_NAMES


def test_aot_refuses_model_names_without_a_training_task_before_jax_starts():
  """Was: 'no AOT task for model.names=...' from `train.aot` once JAX had started (carried item);
  now the up-front check, whose list is the one `train.aot` compiles."""
  from configs import cddpm
  c = cddpm.get_config("tiny")
  c.stage, c.model.names = "aot", ("encoder",)
  with pytest.raises(validate.ConfigError, match=r"^--config.model.names=\('encoder',\): stage "
                                                 r"aot compiles a training task's step, one of"):
    validate.check_values(c, config_lib.STAGES)
  from sadm_jax.train import aot
  assert set(validate.AOT_MODEL_NAMES) == set(aot.TASKS)
  for names in validate.AOT_MODEL_NAMES:
    c.model.names = names
    validate.check_values(c, config_lib.STAGES)


@pytest.mark.parametrize("stage,marker,other", [
    ("reproduce", "report/metrics.json", "evaluation (a demo's or an evaluate run's)"),
    ("demo", "claims.json", "reproduction")])
def test_the_demo_and_the_reproduction_refuse_each_others_workdir(stage, marker, other, tmp_path):
  """Both write W/report/: the reproduction removed and rewrote a demo's report/metrics.csv
  beside its report.md and metrics.json; the demo overwrote a reproduction's."""
  import importlib
  c = importlib.import_module(f"configs.{stage}").get_config("tiny")
  w = tmp_path / "w"
  validate.check_static(c, config_lib.STAGES, str(w))
  (w / "report").mkdir(parents=True)
  (w / "report" / "table.md").write_text("")  # its own (reproduce), or any other file: fine
  validate.check_static(c, config_lib.STAGES, str(w))
  (w / marker).write_text("{}")
  with pytest.raises(validate.ConfigError, match="^" + re.escape(
      f"--workdir={w} holds a {other} ({marker}); stage {stage} would mix its report/ with that "
      f"one: give it another workdir (--config.demo.root={w / 'demo_data'} reuses the cohort "
      "there)") + "$"):
    validate.check_static(c, config_lib.STAGES, str(w))


def test_a_workdir_that_is_a_dangling_link_says_so(tmp_path):
  """A link to a scratch disk that is not mounted: 'is not writable: File exists'."""
  link = tmp_path / "run"
  os.symlink(tmp_path / "scratch" / "run", link)
  with pytest.raises(validate.ConfigError, match=rf"^--workdir={link} is a symbolic link to "
                                                 rf"{tmp_path}/scratch/run, which does not exist"):
    validate_paths.check_workdir(str(link))
