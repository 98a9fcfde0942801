"""Mistakes on the command line: one `error:` line, exit code 2, nothing written, before any data or compile."""

import ast
import glob
import os
import subprocess
import sys

import pytest

from sadm_jax import validate
from tests.data import fake_data
from tests.helpers import REPO

ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "JAX_PLATFORMS": "cpu",
       "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}


def _main(*args, config="configs/cddpm.py:tiny", env=None):
  """`python -m sadm_jax.main --config=<config> *args` with ENV plus `env`."""
  cmd = [sys.executable, "-m", "sadm_jax.main", f"--config={config}", *args]
  return subprocess.run(cmd, cwd=REPO, env={**ENV, **(env or {})}, capture_output=True,
                        text=True, timeout=300)


def _one_error(res) -> str:
  """The single `error:` line; nothing else on stderr (no absl `E…` duplicate, no traceback)."""
  assert res.returncode == 2, (res.returncode, res.stderr[-3000:])
  lines = [l for l in res.stderr.splitlines() if l.strip()]
  assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr[-3000:]
  return lines[0]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("dd"))
  fake_data.write_data_dir(root, n_ixi=6, n_patho=1)
  return root


def test_unknown_config_key_is_one_line_with_the_hint(tmp_path):
  res = _main(f"--workdir={tmp_path / 'w'}", "--config.train.num_stepz=3")
  assert _one_error(res) == ('error: --config.train.num_stepz: no such config key \'num_stepz\'. '
                             'Did you mean "num_steps" instead of "num_stepz"?')
  res = _main(f"--workdir={tmp_path / 'w'}", "--config.seed.x=3")  # below a value: named too
  assert _one_error(res).startswith("error: --config.seed.x: no such config key (")
  assert not os.path.exists(tmp_path / "w")


def test_bad_type_and_bad_config_file_are_one_line(tmp_path):
  line = _one_error(_main(f"--workdir={tmp_path / 'w'}", "--config.train.num_steps=abc"))
  assert "--config.train.num_steps=abc" in line and "invalid literal for int()" in line
  line = _one_error(_main(f"--workdir={tmp_path / 'w'}", config="configs/nope.py"))
  assert line.startswith("error: --config=configs/nope.py: cannot load the config file")
  line = _one_error(_main(f"--workdir={tmp_path / 'w'}", config="configs/cddpm.py:nope"))
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
def test_bad_training_values_are_refused_before_anything(data_dir, tmp_path, args, expected):
  work = tmp_path / "w"
  res = _main(f"--workdir={work}", f"--config.data.data_dir={data_dir}", *args)
  assert _one_error(res).startswith(expected), res.stderr
  assert not os.path.exists(work)  # nothing created
  assert not os.path.exists(os.path.join(data_dir, ".sadm_cache"))  # no data loaded


def test_a_bad_value_is_refused_before_jax_is_imported(data_dir, tmp_path):
  """Values, choices and paths are checked before JAX, Orbax and grain load (a fraction of a
  second): with a `jax` that cannot be imported the error is still the one line."""
  fake = tmp_path / "fake"
  (fake / "jax").mkdir(parents=True)
  (fake / "jax" / "__init__.py").write_text("raise ImportError('jax was imported')\n")
  env = {"PYTHONPATH": os.pathsep.join([str(fake), REPO])}
  for args, config in ((["--config.train.num_steps=-5"], "configs/cddpm.py:tiny"),
                       (["--config.evaluate.cddpm_workdir=/nonexistent/c"],
                        "configs/evaluate.py:tiny")):
    res = _main(f"--workdir={tmp_path / 'w'}", f"--config.data.data_dir={data_dir}", *args,
                config=config, env=env)
    assert _one_error(res).startswith("error: --config."), res.stderr
  res = _main(f"--workdir={tmp_path / 'w'}", f"--config.data.data_dir={data_dir}", env=env)
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
    ("configs/spark_pretrain.py:tiny", ["--config.data.preprocess.crop_size=(120,120,16)"],
     "error: --config.data.preprocess: stage spark needs slices whose sides are multiples of 32 "
     "(its ResNet-50's stride), got 60x60 (crop_size 120x120 / downsample 2)"),
])
def test_bad_stage_values_are_refused(data_dir, tmp_path, config, args, expected):
  work = tmp_path / "w"
  res = _main(f"--workdir={work}", f"--config.data.data_dir={data_dir}", *args, config=config)
  assert _one_error(res).startswith(expected), res.stderr
  assert not os.path.exists(work)


def test_same_sadm_workdir_twice_and_negative_workers_are_refused(data_dir, tmp_path):
  """A SADM run listed twice (also through another spelling of its path) would be evaluated and
  reported as two folds; a negative worker count would quietly run serially."""
  run = tmp_path / "sadm0"
  run.mkdir()
  res = _main(f"--workdir={tmp_path / 'w'}", f"--config.data.data_dir={data_dir}",
              f"--config.evaluate.sadm_workdirs=('{run}','{tmp_path}/./sadm0/')",
              config="configs/evaluate.py:tiny")
  assert _one_error(res) == (f"error: --config.evaluate.sadm_workdirs[1]={tmp_path}/./sadm0/ is "
                             "the same run as sadm_workdirs[0]; list each SADM workdir once")
  res = _main(f"--workdir={tmp_path / 'w'}", f"--config.data.data_dir={data_dir}",
              "--config.data.num_workers=-3", config="configs/prepare.py")
  assert _one_error(res).startswith("error: --config.data.num_workers=-3 must be >= 0")
  assert not os.path.exists(tmp_path / "w")


def test_missing_data_dir_is_refused(tmp_path):
  res = _main(f"--workdir={tmp_path / 'w'}", f"--config.data.data_dir={tmp_path / 'none'}")
  assert _one_error(res) == (f"error: --config.data.data_dir={tmp_path / 'none'}: no such "
                             "directory (stage cddpm reads the data directory (DATA_DIR))")
  res = _main(f"--workdir={tmp_path / 'w'}")
  assert _one_error(res).startswith("error: --config.data.data_dir is not set")


def test_workdir_that_is_a_file_is_refused(data_dir, tmp_path):
  f = tmp_path / "w"
  f.write_text("not a dir")
  res = _main(f"--workdir={f}", f"--config.data.data_dir={data_dir}")
  assert _one_error(res) == f"error: --workdir={f} is a file, not a directory"
  res = _main(f"--workdir={f / 'sub'}", f"--config.data.data_dir={data_dir}")
  assert _one_error(res) == (f"error: --workdir={f / 'sub'} cannot be created: {f} is a file, "
                             "not a directory")
  assert f.read_text() == "not a dir"


def test_unwritable_workdir_is_refused(data_dir):
  # /sys refuses new entries even to root (EPERM).
  res = _main("--workdir=/sys/sadm_workdir", f"--config.data.data_dir={data_dir}")
  assert _one_error(res) == ("error: --workdir=/sys/sadm_workdir is not writable: Operation not "
                             "permitted")


def test_read_only_filesystem_workdir_is_refused(data_dir, tmp_path):
  mnt = tmp_path / "ro"
  mnt.mkdir()
  if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro", "none", str(mnt)],
                    capture_output=True).returncode:
    pytest.skip("cannot mount a read-only tmpfs here (needs CAP_SYS_ADMIN)")
  try:
    for work in (mnt, mnt / "new"):
      res = _main(f"--workdir={work}", f"--config.data.data_dir={data_dir}")
      assert _one_error(res) == f"error: --workdir={work} is not writable: Read-only file system"
  finally:
    subprocess.run(["umount", str(mnt)], check=True)


def test_data_error_is_printed_once(tmp_path):
  empty = tmp_path / "empty"
  empty.mkdir()
  res = _main(f"--workdir={tmp_path / 'w'}", f"--config.data.data_dir={empty}",
              config="configs/prepare.py")
  line = _one_error(res)
  assert str(empty) in line
  assert not any(l.startswith("E") for l in res.stderr.splitlines())


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


def test_non_finite_training_loss_is_one_line_exit_2(monkeypatch, capsys, tmp_path):
  """A diverged run stops with the loop's one-line message (naming the kept step), exit code 2."""
  from configs import cddpm as cddpm_config
  from sadm_jax import main as main_lib
  from sadm_jax.train import loop

  def diverge(config, workdir):
    raise loop.NonFiniteLossError("non-finite training loss (nan) at step 5; stopping. The last "
                                  "good checkpoint (step 4) is kept in W/checkpoints")

  monkeypatch.setattr(main_lib, "run_stage", diverge)
  monkeypatch.setattr(validate, "validate", lambda *a, **k: None)
  assert main_lib.run_checked(cddpm_config.get_config("tiny"), str(tmp_path)) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert err == ["error: non-finite training loss (nan) at step 5; stopping. The last good "
                 "checkpoint (step 4) is kept in W/checkpoints"]


def test_unwritable_compile_log_is_one_line_before_anything_runs(data_dir, tmp_path):
  log = tmp_path / "no_such_dir" / "compile.jsonl"
  res = _main(f"--workdir={tmp_path / 'w'}", f"--config.data.data_dir={data_dir}",
              env={"SADM_COMPILE_LOG": str(log)})
  assert _one_error(res) == (f"error: SADM_COMPILE_LOG={log}: cannot write the compile log "
                             "(No such file or directory)")
  assert not os.path.exists(tmp_path / "w")


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
  res = _main(f"--workdir={tmp_path / 'w'}", config=str(cfg))
  assert _one_error(res) == f"error: --config={cfg}: {expected}"
  assert not os.path.exists(tmp_path / "w")


def test_config_path_that_is_a_directory_is_one_line(tmp_path):
  res = _main(f"--workdir={tmp_path / 'w'}", config=str(tmp_path))
  assert _one_error(res) == (f"error: --config={tmp_path}: cannot load the config file: [Errno 21] "
                             f"Is a directory: '{tmp_path}'")


def test_stray_positional_argument_is_one_line(data_dir, tmp_path):
  res = _main(f"--workdir={tmp_path / 'w'}", f"--config.data.data_dir={data_dir}", "train")
  assert _one_error(res) == ("error: unexpected arguments: train (every option is --config=, "
                             "--workdir= or --config.<key>=<value>)")
  assert not os.path.exists(tmp_path / "w")


@pytest.mark.parametrize("env,expected", [
    ({"SLURM_NTASKS": "two", "SLURM_PROCID": "0", "SLURM_STEP_NODELIST": "n1"},
     "error: environment variable SLURM_NTASKS='two' is not an integer"),
    ({"SADM_DISTRIBUTED": "yes"}, "error: SADM_DISTRIBUTED='yes': expected 'auto', 'off' or unset"),
    ({"JAX_PLATFORMS": "nosuchplatform"},
     "error: JAX_PLATFORMS=nosuchplatform: no JAX backend: Unable to initialize backend "
     "'nosuchplatform'"),
])
def test_bad_environment_is_one_line(data_dir, tmp_path, env, expected):
  res = _main(f"--workdir={tmp_path / 'w'}", f"--config.data.data_dir={data_dir}", env=env)
  assert _one_error(res).startswith(expected), res.stderr
  assert not os.path.exists(tmp_path / "w")


def _run_stage_raising(monkeypatch, tmp_path, exc: BaseException) -> int:
  """`main.run_checked` on the tiny cDDPM config with a stage that raises `exc`; its exit code."""
  from configs import cddpm as cddpm_config
  from sadm_jax import main as main_lib

  def stage(config, workdir):
    raise exc

  monkeypatch.setattr(main_lib, "run_stage", stage)
  monkeypatch.setattr(validate, "validate", lambda *a, **k: None)
  return main_lib.run_checked(cddpm_config.get_config("tiny"), str(tmp_path))


def test_interrupt_is_one_line_exit_130(monkeypatch, capsys, tmp_path):
  """Ctrl-C (SIGINT) in a stage: one line saying the workdir resumes, exit code 130 (128 +
  SIGINT, as a shell reports it), no traceback."""
  assert _run_stage_raising(monkeypatch, tmp_path, KeyboardInterrupt()) == 130
  assert capsys.readouterr().err.strip().splitlines() == [
      f"error: stage cddpm interrupted (SIGINT); {tmp_path} keeps only complete files: run the "
      "same command again to resume"]


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
  res = _main(*args, f"--config.predict.output={out}", config="configs/predict.py:tiny")
  assert _one_error(res) == f"error: --config.predict.output={out} is a file, not a directory"
  res = _main(*args, "--config.predict.output=/sys/sadm_out", config="configs/predict.py:tiny")
  assert _one_error(res) == ("error: --config.predict.output=/sys/sadm_out is not writable: "
                             "Operation not permitted")
  assert out.read_text() == "a file"
  for value in ("nan", "inf"):
    res = _main(*args, f"--config.predict.threshold={value}", config="configs/predict.py:tiny")
    assert _one_error(res) == (f"error: --config.predict.threshold={value} must be a finite number "
                               "(or unset: the evaluation's τ)")


def test_compilation_cache_that_is_a_file_is_one_line(data_dir, tmp_path):
  f = tmp_path / "cache"
  f.write_text("not a dir")
  res = _main(f"--workdir={tmp_path / 'w'}", f"--config.data.data_dir={data_dir}",
              env={"SADM_COMPILATION_CACHE": str(f), "JAX_COMPILATION_CACHE_DIR": ""})
  assert _one_error(res).startswith(f"error: compilation cache {f}: {f} is a file, not a directory")
  assert not os.path.exists(tmp_path / "w")


def test_a_refused_write_is_one_line_exit_2_and_a_bug_keeps_its_traceback(monkeypatch, capsys,
                                                                           tmp_path):
  import errno
  target = str(tmp_path / "metrics.jsonl")
  disk_full = OSError(errno.ENOSPC, "No space left on device", target)
  assert _run_stage_raising(monkeypatch, tmp_path, disk_full) == 2
  assert capsys.readouterr().err.strip().splitlines() == [
      f"error: {target}: No space left on device (stage cddpm; files are written whole: run the "
      "same command again once it can write)"]

  with pytest.raises(FileNotFoundError):  # a bug, not a refused write: its traceback is kept
    _run_stage_raising(monkeypatch, tmp_path,
                       FileNotFoundError(errno.ENOENT, "No such file or directory", target))


def test_url_workdir_is_refused_not_made_a_local_directory(tmp_path):
  # `gs://b/r` would otherwise become a local directory `gs:/b/r` on every host (launch/README.md).
  res = subprocess.run([sys.executable, "-m", "sadm_jax.main",
                        f"--config={os.path.join(REPO, 'configs/cddpm.py:tiny')}",
                        "--workdir=gs://bucket/runs/c", "--config.stage=describe"],
                       cwd=tmp_path, env={**ENV, "PYTHONPATH": REPO}, capture_output=True,
                       text=True, timeout=300)
  assert _one_error(res).startswith("error: --workdir=gs://bucket/runs/c is a URL; ")
  assert os.listdir(tmp_path) == []


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
