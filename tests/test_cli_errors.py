"""Mistakes in config values and files: one `error:` line, exit 2, nothing written, no data read."""

import ast
import glob
import os

import pytest

from sadm_jax import validate
from tests.cli_common import one_error, run_main
from tests.helpers import REPO


def test_unknown_config_key_is_one_line_with_the_hint(tmp_path):
  res = run_main(f"--workdir={tmp_path / 'w'}", "--config.train.num_stepz=3")
  assert one_error(res) == ('error: --config.train.num_stepz: no such config key \'num_stepz\'. '
                            'Did you mean "num_steps" instead of "num_stepz"?')
  res = run_main(f"--workdir={tmp_path / 'w'}", "--config.seed.x=3")  # below a value: named too
  assert one_error(res).startswith("error: --config.seed.x: no such config key (")
  assert not os.path.exists(tmp_path / "w")


def test_bad_type_and_bad_config_file_are_one_line(tmp_path):
  line = one_error(run_main(f"--workdir={tmp_path / 'w'}", "--config.train.num_steps=abc"))
  assert "--config.train.num_steps=abc" in line and "invalid literal for int()" in line
  line = one_error(run_main(f"--workdir={tmp_path / 'w'}", config="configs/nope.py"))
  assert line.startswith("error: --config=configs/nope.py: cannot load the config file")
  line = one_error(run_main(f"--workdir={tmp_path / 'w'}", config="configs/cddpm.py:nope"))
  assert "unknown config argument 'nope'" in line
  assert not os.path.exists(tmp_path / "w")


@pytest.mark.parametrize("args,expected", [
    (["--config.train.num_steps=-5"], "error: --config.train.num_steps=-5 must be >= 0"),
    (["--config.train.num_steps=0", "--config.train.num_epochs=0"],
     "error: --config.train.num_epochs=0 must be > 0"),
    (["--config.train.eval_every=0"], "error: --config.train.eval_every=0 must be > 0"),
    (["--config.train.batch_size=7"],
     "error: --config.train.batch_size=7 (global) is not divisible by the 2 device(s)"),
    (["--config.data.prefetch_batches=0"], "error: --config.data.prefetch_batches=0 must be > 0"),
    (["--config.optimizer.learning_rate=0"],
     "error: --config.optimizer.learning_rate=0.0 must be > 0"),
    (["--config.diffusion.num_timesteps=0"],
     "error: --config.diffusion.num_timesteps=0 must be > 0"),
    (["--config.mesh.fsdp_rules=(('(', 'fsdp'),)"],
     "error: --config.mesh.fsdp_rules has a bad rule ('(', 'fsdp') (missing ), unterminated "
     "subpattern at position 0); expected (regex, kind) pairs"),
    (["--config.mesh.fsdp_rules=(('kernel$', 'shard'),)"],
     "error: --config.mesh.fsdp_rules: rule ('kernel$', 'shard') has kind 'shard'; expected one of "
     "'fsdp', 'replicate'"),
    (["--config.model.dtype=float64"], "error: --config.model.dtype='float64' is not one of "),
    (["--config.diffusion.noise=perlin"], "error: --config.diffusion.noise='perlin' is not one"),
    (["--config.data.slice_sampling=random"], "error: --config.data.slice_sampling='random'"),
    (["--config.optimizer.name=sgd"], "error: --config.optimizer.name='sgd' is not one of"),
    (["--config.stage=train"], "error: --config.stage='train' is not one of"),
    (["--config.model.encoder.pretrained_workdir=/nonexistent/spark"],
     "error: --config.model.encoder.pretrained_workdir=/nonexistent/spark: no such directory"),
    (["--config.model.unet.model_channels=48", "--config.model.unet.num_groups=32"],
     "error: --config.model.unet.model_channels=48 is not divisible by num_groups=32 (GroupNorm)"),
    (["--config.data.preprocess.crop_size=(128,128)"],
     "error: --config.data.preprocess: crop_size must be 3 positive ints, got (128, 128)"),
    (["--config.data.preprocess.percentiles=(99.0,1.0)"],
     "error: --config.data.preprocess: percentiles must satisfy 0 <= lo < hi <= 100"),
])
def test_bad_training_values_are_refused_before_anything(cli_data_dir, tmp_path, args, expected):
  work = tmp_path / "w"
  res = run_main(f"--workdir={work}", f"--config.data.data_dir={cli_data_dir}", *args)
  assert one_error(res).startswith(expected), res.stderr
  assert not os.path.exists(work)  # nothing created
  assert not os.path.exists(os.path.join(cli_data_dir, ".sadm_cache"))  # no data loaded


def test_a_bad_value_is_refused_before_jax_is_imported(cli_data_dir, tmp_path):
  """Values, choices and paths are checked before JAX, Orbax and grain load (a fraction of a
  second): with a `jax` that cannot be imported the error is still the one line."""
  fake = tmp_path / "fake"
  (fake / "jax").mkdir(parents=True)
  (fake / "jax" / "__init__.py").write_text("raise ImportError('jax was imported')\n")
  env = {"PYTHONPATH": os.pathsep.join([str(fake), REPO])}
  for args, config in ((["--config.train.num_steps=-5"], "configs/cddpm.py:tiny"),
                       (["--config.evaluate.cddpm_workdir=/nonexistent/c"],
                        "configs/evaluate.py:tiny")):
    res = run_main(f"--workdir={tmp_path / 'w'}", f"--config.data.data_dir={cli_data_dir}", *args,
                   config=config, env=env)
    assert one_error(res).startswith("error: --config."), res.stderr
  res = run_main(f"--workdir={tmp_path / 'w'}", f"--config.data.data_dir={cli_data_dir}", env=env)
  assert res.returncode != 0 and "jax was imported" in res.stderr  # the fake is in the way
  assert not os.path.exists(tmp_path / "w")


@pytest.mark.parametrize("config,args,expected", [
    ("configs/sadm_draem.py:tiny", ["--config.sadm.mode=bratz"],
     "error: --config.sadm.mode='bratz' is not one of 'draem', 'brats', 'atlas'"),
    ("configs/sadm_draem.py:tiny", ["--config.sadm.loss=focal"], "error: --config.sadm.loss="),
    ("configs/sadm_brats.py:tiny", ["--config.sadm.weak_train_rows=(10,)"],
     "error: --config.sadm.weak_train_rows=(10,) must be a (start, stop) pair of row numbers with "
     "0 <= start < stop"),
    ("configs/sadm_atlas.py:tiny", ["--config.sadm.weak_val_rows=(5, 0)"],
     "error: --config.sadm.weak_val_rows=(5, 0) must be a (start, stop) pair"),
    ("configs/sadm_draem.py:tiny", ["--config.sadm.cddpm_workdir=/nonexistent/cddpm"],
     "error: --config.sadm.cddpm_workdir=/nonexistent/cddpm: no such directory"),
    ("configs/evaluate.py:tiny", ["--config.diffusion.ensemble_timesteps=(249,1000)"],
     "error: --config.diffusion.ensemble_timesteps=(249, 1000) must be 1 or more timesteps in "
     "[0, 999]"),
    ("configs/evaluate.py:tiny", ["--config.evaluate.combination=max"],
     "error: --config.evaluate.combination='max' is not one of"),
    ("configs/evaluate.py:tiny", ["--config.evaluate.residual_mode=l3"],
     "error: --config.evaluate.residual_mode='l3'"),
    ("configs/evaluate.py:tiny", ["--config.evaluate.threshold_method=grid"],
     "error: --config.evaluate.threshold_method='grid'"),
    ("configs/evaluate.py:tiny", ["--config.evaluate.test_sets=('Bratz',)"],
     "error: --config.evaluate.test_sets has unknown set(s) ['Bratz']; expected a subset of "
     "'Brats21', 'ATLAS_v2', 'MSLUB', 'WMH', 'DRAEM'"),
    ("configs/evaluate.py:tiny", ["--config.evaluate.sadm_workdirs=('/nonexistent/s0',)"],
     "error: --config.evaluate.sadm_workdirs[0]=/nonexistent/s0: no such directory"),
    ("configs/evaluate.py:tiny", ["--config.evaluate.cddpm_workdir=/nonexistent/c"],
     "error: --config.evaluate.cddpm_workdir=/nonexistent/c: no such directory"),
    ("configs/demo.py:tiny", ["--config.demo.root=/proc/version/demo_data"],
     "error: --config.demo.root=/proc/version/demo_data cannot be created: /proc/version is a "
     "file, not a directory"),
    ("configs/reproduce.py:tiny", ["--config.demo.root=/proc/version"],
     "error: --config.demo.root=/proc/version is a file, not a directory"),
    ("configs/cddpm.py:tiny", ["--config.stage=aot", "--config.model.names=('encoder',)"],
     "error: --config.model.names=('encoder',): stage aot compiles a training task's step"),
    ("configs/spark_pretrain.py:tiny", ["--config.data.preprocess.crop_size=(120,120,16)"],
     "error: --config.data.preprocess: stage spark needs slices whose sides are multiples of 32 "
     "(its ResNet-50's stride), got 60x60 (crop_size 120x120 / downsample 2)"),
])
def test_bad_stage_values_are_refused(cli_data_dir, tmp_path, config, args, expected):
  work = tmp_path / "w"
  res = run_main(f"--workdir={work}", f"--config.data.data_dir={cli_data_dir}", *args,
                 config=config)
  assert one_error(res).startswith(expected), res.stderr
  assert not os.path.exists(work)


def test_same_sadm_workdir_twice_and_negative_workers_are_refused(cli_data_dir, tmp_path):
  """A SADM run listed twice (also through another spelling of its path) would be evaluated and
  reported as two folds; a negative worker count would quietly run serially."""
  run = tmp_path / "sadm0"
  run.mkdir()
  res = run_main(f"--workdir={tmp_path / 'w'}", f"--config.data.data_dir={cli_data_dir}",
                 f"--config.evaluate.sadm_workdirs=('{run}','{tmp_path}/./sadm0/')",
                 config="configs/evaluate.py:tiny")
  assert one_error(res) == (f"error: --config.evaluate.sadm_workdirs[1]={tmp_path}/./sadm0/ is "
                            "the same run as sadm_workdirs[0]; list each SADM workdir once")
  res = run_main(f"--workdir={tmp_path / 'w'}", f"--config.data.data_dir={cli_data_dir}",
                 "--config.data.num_workers=-3", config="configs/prepare.py")
  assert one_error(res).startswith("error: --config.data.num_workers=-3 must be >= 0")
  assert not os.path.exists(tmp_path / "w")


def test_choices_match_the_modules_that_use_them():
  from sadm_jax.diffusion import noise
  from sadm_jax.evaluate import anomaly_map
  try:
    from sadm_jax.evaluate.planning import METHODS
  except ImportError:  # before the evaluation split
    from sadm_jax.evaluate.run import METHODS
  from sadm_jax.models import factory
  from sadm_jax.train import sadm
  from sadm_jax import main as main_lib
  c = validate.CHOICES
  assert set(c["model.dtype"]) == set(factory.DTYPES) == set(c["evaluate.dtype"])
  assert c["diffusion.noise"] == noise.NOISE_KINDS
  assert c["sadm.mode"] == sadm.MODES and c["sadm.loss"] == sadm.LOSSES
  assert set(c["evaluate.combination"]) == set(anomaly_map.COMBINATIONS) | set(anomaly_map._ALIASES)
  assert c["evaluate.residual_mode"] == anomaly_map.RESIDUAL_MODES
  assert validate.EVALUATE_METHODS == METHODS
  from sadm_jax.data import layout
  from sadm_jax.evaluate.planning import DRAEM_SET
  assert set(validate.EVALUATE_TEST_SETS) == set(layout.PATHOLOGICAL) | {DRAEM_SET}
  from sadm_jax.train import sharding
  assert validate.FSDP_RULE_KINDS == sharding.RULE_KINDS
  from sadm_jax.models import resnet
  assert validate.SPARK_GRID_MULTIPLE == resnet.DOWNSAMPLE_RATIO
  assert set(validate.TRAINING_STAGES) | set(validate.DATA_STAGES) <= set(main_lib.STAGES)


def test_data_layer_never_imports_the_application_config():
  offenders = []
  for path in glob.glob(os.path.join(REPO, "sadm_jax", "data", "*.py")):
    with open(path, encoding="utf-8") as f:
      tree = ast.parse(f.read(), path)
    for node in ast.walk(tree):
      names = []
      if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
      elif isinstance(node, ast.ImportFrom) and node.module:
        names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
      offenders += [(os.path.basename(path), n) for n in names
                    if n == "sadm_jax.config" or n.startswith("sadm_jax.config.")]
  assert offenders == []
  assert len(glob.glob(os.path.join(REPO, "sadm_jax", "data", "*.py"))) > 5


@pytest.mark.parametrize("source,expected", [
    ("def get_config(:\n", "cannot load the config file: SyntaxError: invalid syntax (bad.py, line 1)"),
    ("def get_config():\n  return undefined_name\n",
     "cannot load the config file: NameError: name 'undefined_name' is not defined"),
    ("x = 1\n", "the config file defines no get_config()"),
    ("def get_config():\n  return {'stage': 'cddpm'}\n",
     "get_config() returned dict, not the ml_collections.ConfigDict of configs/default.py's "
     "get_config()"),
    ("import ml_collections\ndef get_config():\n  return ml_collections.ConfigDict({'a': 1})\n",
     "the config has no 'stage'; build it on configs/default.py's get_config()"),
])
def test_broken_config_file_is_one_line_naming_it(tmp_path, source, expected):
  cfg = tmp_path / "bad.py"
  cfg.write_text(source)
  res = run_main(f"--workdir={tmp_path / 'w'}", config=str(cfg))
  assert one_error(res) == f"error: --config={cfg}: {expected}"
  assert not os.path.exists(tmp_path / "w")


def test_config_path_that_is_a_directory_is_one_line(tmp_path):
  res = run_main(f"--workdir={tmp_path / 'w'}", config=str(tmp_path))
  assert one_error(res) == (f"error: --config={tmp_path}: cannot load the config file: [Errno 21] "
                            f"Is a directory: '{tmp_path}'")


def test_stray_positional_argument_is_one_line(cli_data_dir, tmp_path):
  res = run_main(f"--workdir={tmp_path / 'w'}", f"--config.data.data_dir={cli_data_dir}", "train")
  assert one_error(res) == ("error: unexpected arguments: train (every option is --config=, "
                            "--workdir= or --config.<key>=<value>)")
  assert not os.path.exists(tmp_path / "w")


def test_every_config_file_refuses_an_unknown_argument():
  """`configs/<x>.py:<typo>` is an error, never the full-size config run silently."""
  import importlib
  import inspect
  names = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(REPO, "configs", "*.py"))
                 if not p.endswith("__init__.py"))
  checked = []
  for name in names:
    get_config = importlib.import_module(f"configs.{name}").get_config
    if not inspect.signature(get_config).parameters:
      continue  # configs/default.py takes no argument (ml_collections refuses one: TypeError)
    with pytest.raises(ValueError, match="unknown config argument 'tny'"):
      get_config("tny")
    checked.append(name)
  assert "prepare" in checked and len(checked) >= 8, checked


def test_bad_predict_output_or_threshold_is_refused_before_loading(tmp_path):
  scan = tmp_path / "scan.nii.gz"
  scan.write_bytes(b"not read: refused before")
  out = tmp_path / "out"
  out.write_text("a file")
  args = (f"--workdir={tmp_path / 'w'}", f"--config.predict.checkpoint_dir={tmp_path}",
          f"--config.predict.input={scan}")
  res = run_main(*args, f"--config.predict.output={out}", config="configs/predict.py:tiny")
  assert one_error(res) == f"error: --config.predict.output={out} is a file, not a directory"
  res = run_main(*args, "--config.predict.output=/sys/sadm_out", config="configs/predict.py:tiny")
  assert one_error(res) == ("error: --config.predict.output=/sys/sadm_out is not writable: "
                            "Operation not permitted")
  assert out.read_text() == "a file"
  for value in ("nan", "inf"):
    res = run_main(*args, f"--config.predict.threshold={value}", config="configs/predict.py:tiny")
    assert one_error(res) == (f"error: --config.predict.threshold={value} must be a finite number "
                              "(or unset: the evaluation's τ)")


def test_negative_threshold_or_a_file_as_predict_model_is_refused(tmp_path):
  """A negative τ would flag every brain voxel (every method's map is ≥ 0); a file given as the
  model's workdir is named as a file, not "no such directory". In process: the CLI's one handler
  prints these lines (the test above runs it)."""
  from configs import predict as predict_config
  from sadm_jax.config import STAGES
  scan = tmp_path / "scan.nii.gz"
  scan.write_bytes(b"not read")
  c = predict_config.get_config("tiny")
  c.predict.checkpoint_dir, c.predict.input = str(tmp_path), str(scan)
  c.predict.threshold = -0.1
  with pytest.raises(validate.ConfigError, match=r"^--config.predict.threshold=-0.1 must be ≥ 0: "
                     "anomaly maps are ≥ 0, so a negative τ would flag every brain voxel$"):
    validate.check_static(c, STAGES, str(tmp_path / "w"))
  c.predict.threshold = 0.0  # allowed: flags every voxel above 0
  validate.check_static(c, STAGES, str(tmp_path / "w"))
  c.predict.checkpoint_dir = str(scan)
  with pytest.raises(validate.ConfigError, match=r"checkpoint_dir=.*scan.nii.gz is a file: give the "
                     r"run's workdir \(a directory\)$"):
    validate.check_static(c, STAGES, str(tmp_path / "w"))


def test_a_resuming_cddpm_needs_no_spark_run(tmp_path):
  """`model.encoder.pretrained_workdir` is read at a fresh start only: a cDDPM workdir holding a
  checkpoint step resumes although the SparK run is gone; a fresh start is refused in one line."""
  from configs import cddpm as cddpm_config
  from sadm_jax.config import STAGES
  c = cddpm_config.get_config("tiny")
  c.data.data_dir = str(tmp_path)
  c.model.encoder.pretrained_workdir = str(tmp_path / "gone_spark")
  with pytest.raises(ValueError, match="pretrained_workdir=.*gone_spark: no such directory"):
    validate.check_static(c, STAGES, str(tmp_path / "run"))
  os.makedirs(tmp_path / "run" / "checkpoints" / "4")
  validate.check_static(c, STAGES, str(tmp_path / "run"))  # resumes: not read


def _config_flags_error(argv) -> str:
  """The ConfigFlagsError line `config.parse_config_flags` gives for `argv`, in process (fresh
  FlagValues holding `config` and `workdir`, as `sadm_jax.main` defines them)."""
  from absl import flags
  from ml_collections import config_flags
  from sadm_jax import config as config_lib
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, flag_values=fv, lock_config=True, sys_argv=argv)
  flags.DEFINE_string("workdir", None, "", flag_values=fv)
  with pytest.raises(config_lib.ConfigFlagsError) as e:
    config_lib.parse_config_flags(fv, argv)
  return str(e.value)


@pytest.mark.parametrize("argv", [["--config=configs/default.py:tiny"],
                                  ["--config", "configs/default.py:tiny", "--config.seed=1"]])
def test_an_argument_to_a_config_file_that_takes_none_is_one_line(argv):
  """Was: 'Error whilst parsing config file: TypeError: get_config() takes 0 positional
  arguments but 1 was given'."""
  assert _config_flags_error(["main", *argv, "--workdir=/w"]) == (
      "--config=configs/default.py:tiny: this config file takes no ':' argument; give "
      "--config=configs/default.py (its get_config() has no parameter)")


@pytest.mark.parametrize("extra", [[], ["--config.seed=1"]])
def test_config_given_twice_is_one_line_naming_both(extra):
  """Was: the last file silently won, or with an override 'The flag 'config.seed' is defined
  twice. First from absl.flags._flag, ...', naming neither file (in process: no subprocess)."""
  argv = ["main", "--config=configs/cddpm.py:tiny", "--workdir=/w",
          "--config", "configs/spark_pretrain.py:tiny", *extra]
  assert _config_flags_error(argv) == ("--config is given 2 times (configs/cddpm.py:tiny, "
                                       "configs/spark_pretrain.py:tiny); give one config file")


def test_an_empty_config_argument_is_refused_not_run_full_size():
  """`--config=configs/cddpm.py:` (e.g. `:$SIZE` with SIZE unset) ran the full-size cDDPM."""
  assert _config_flags_error(["main", "--config=configs/cddpm.py:", "--workdir=/w"]) == (
      "--config=configs/cddpm.py: has nothing after ':'; give the argument (e.g. "
      "configs/cddpm.py:tiny) or drop the ':' for the full-size config")


def test_workdir_given_twice_is_one_line_naming_both(capsys):
  """Was: absl kept the last --workdir without a word (in process: refused before parsing)."""
  from sadm_jax import main as main_lib
  with pytest.raises(SystemExit) as e:
    main_lib.parse_flags(["main", "--config=configs/cddpm.py:tiny", "--workdir=/runs/a",
                          "--workdir", "/runs/b"])
  assert e.value.code == 2
  assert capsys.readouterr().err == "error: --workdir is given 2 times (/runs/a, /runs/b); give one\n"


def test_none_for_a_tuple_setting_unsets_a_placeholder_and_is_refused_elsewhere():
  """ml_collections read `--config.sadm.weak_train_rows=None` as the 1-tuple (None,) (then
  refused as "(None,) must be a (start, stop) pair ... (or unset)"), and an empty value as ('',)."""
  from absl import flags
  from ml_collections import config_flags
  from sadm_jax import config as config_lib
  argv = ["main", "--config=configs/sadm_brats.py:tiny", "--workdir=/w",
          "--config.sadm.weak_train_rows=None", "--config.sadm.weak_val_rows", "None"]
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, flag_values=fv, lock_config=True, sys_argv=argv)
  flags.DEFINE_string("workdir", None, "", flag_values=fv)
  config_lib.parse_config_flags(fv, argv)
  assert fv.config.sadm.weak_train_rows is None and fv.config.sadm.weak_val_rows is None
  base = ["main", "--config=configs/sadm_brats.py:tiny", "--workdir=/w"]
  assert _config_flags_error([*base, "--config.diffusion.ensemble_timesteps=None"]) == (
      "--config.diffusion.ensemble_timesteps=None: diffusion.ensemble_timesteps is a tuple "
      "(default (249, 499, 749)) that cannot be None; give a tuple, e.g. "
      "--config.diffusion.ensemble_timesteps='(a, b)'")
  assert _config_flags_error([*base, "--config.evaluate.sadm_workdirs="]) == (
      "--config.evaluate.sadm_workdirs= is empty: give a tuple, e.g. "
      "--config.evaluate.sadm_workdirs='(a, b)'")
  assert _config_flags_error([*base, "--config.sadm.weak_train_rows="]) == (
      "--config.sadm.weak_train_rows= is empty: give a tuple, e.g. "
      "--config.sadm.weak_train_rows='(a, b)', or None (unset)")
  assert _config_flags_error([*base, "--config.sadm.weak_train_rows=None",
                              "--config.sadm.weak_train_rows=3"]) == (
      "--config.sadm.weak_train_rows=None is given with other values (None, 3); give None alone")
