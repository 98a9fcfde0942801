"""Up-front checks of the paths a config and its workdir name: inputs that exist, outputs that can be written."""

from __future__ import annotations

import math
import os
import re

import ml_collections

from sadm_jax import config as config_lib
from sadm_jax.config import ConfigError
from sadm_jax.evaluate import listing
from sadm_jax.utils import io

# Stages that read DATA_DIR (`demo` generates its own; describe/aot/predict read none).
DATA_STAGES = ("prepare", "spark", "cddpm", "sadm", "evaluate")


def _fail(msg: str):
  raise ConfigError(msg)


def _existing_dir(key: str, path: str, what: str) -> None:
  if not path:
    _fail(f"--config.{key} is not set: {what}")
  if not os.path.isdir(path):
    _fail(f"--config.{key}={path}: no such directory ({what})")


def holds_steps(workdir: str | None) -> bool:
  """Whether `workdir` holds a training checkpoint step (`<workdir>/checkpoints/<step>`): the run
  resumes (or stops at a damaged one), and never builds its initial state again."""
  ckpt = os.path.join(workdir, "checkpoints") if workdir else ""
  return bool(ckpt) and os.path.isdir(ckpt) and any(n.isdigit() for n in os.listdir(ckpt))


def check_paths(config: ml_collections.ConfigDict, workdir: str | None = None) -> None:
  """Inputs the stage reads: DATA_DIR, the referenced runs, predict's scan. The SparK run that
  initialises a cDDPM's encoder is read at a fresh start only: not checked when `workdir`
  resumes."""
  stage = config.stage
  if stage in DATA_STAGES and config.data.num_workers < 0:
    _fail(f"--config.data.num_workers={config.data.num_workers} must be >= 0 (0 = in this process)")
  if stage in DATA_STAGES:
    _existing_dir("data.data_dir", config.data.data_dir,
                  f"stage {stage} reads the data directory (DATA_DIR)")
  if (stage == "cddpm" and config.model.encoder.pretrained_workdir
      and not holds_steps(workdir)):  # (stage spark does not read it: `sadm_jax.ignored`)
    _existing_dir("model.encoder.pretrained_workdir", config.model.encoder.pretrained_workdir,
                  "a SparK workdir to initialise the encoder from")
  if stage == "sadm" and config.sadm.use_cddpm:
    _existing_dir("sadm.cddpm_workdir", config.sadm.cddpm_workdir,
                  "stage II needs the workdir of a trained cDDPM (stage=cddpm), or "
                  "sadm.use_cddpm=False for the plain-UNet ablation")
  if stage == "evaluate":
    if config.evaluate.cddpm_workdir:
      _existing_dir("evaluate.cddpm_workdir", config.evaluate.cddpm_workdir, "a cDDPM workdir")
    seen = {}
    for i, w in enumerate(config.evaluate.sadm_workdirs):
      if not os.path.isdir(w):
        _fail(f"--config.evaluate.sadm_workdirs[{i}]={w}: no such directory (a SADM workdir)")
      first = seen.setdefault(os.path.realpath(w), i)
      if first != i:  # the same run twice would be reported as two folds
        _fail(f"--config.evaluate.sadm_workdirs[{i}]={w} is the same run as "
              f"sadm_workdirs[{first}]; list each SADM workdir once")
  if stage in ("demo", "reproduce") and config.demo.root:
    check_dir_path(config.demo.root, "--config.demo.root")
  if stage in ("demo", "reproduce") and workdir:  # both write W/report/: one would mix the other's
    other, marker = (("reproduction", "claims.json") if stage == "demo"
                     else ("evaluation (a demo's or an evaluate run's)", "report/metrics.json"))
    if os.path.isfile(os.path.join(workdir, marker)):
      _fail(f"--workdir={workdir} holds a {other} ({marker}); stage {stage} would mix its report/ "
            f"with that one: give it another workdir (--config.demo.root="
            f"{os.path.join(workdir, 'demo_data')} reuses the cohort there)")
  if stage == "predict":
    p = config.predict
    if p.threshold is not None and not math.isfinite(p.threshold):
      _fail(f"--config.predict.threshold={p.threshold} must be a finite number (or unset: the "
            "evaluation's τ)")
    if p.threshold is not None and p.threshold < 0:  # every method's anomaly map is ≥ 0
      _fail(f"--config.predict.threshold={p.threshold} must be ≥ 0: anomaly maps are ≥ 0, so a "
            "negative τ would flag every brain voxel")
    if p.checkpoint_dir and os.path.isfile(p.checkpoint_dir):
      _fail(f"--config.predict.checkpoint_dir={p.checkpoint_dir} is a file: give the run's "
            "workdir (a directory)")
    if p.checkpoint_dir and not os.path.isdir(p.checkpoint_dir):
      _fail(f"--config.predict.checkpoint_dir={p.checkpoint_dir}: no such directory")
    # a path (file, folder, CSV) or a comma-separated list, split as predict splits it (a path
    # holding a comma is one); glob patterns are listed, and refused in one line when they match
    # no scan, at predict's start (before any model is loaded)
    parts = {"input": [q for q in listing.input_parts(str(p.input)) if not listing.is_pattern(q)],
             "mask": listing.split_list(str(p.mask))}
    for key, given in parts.items():
      for part in given:
        if not os.path.exists(part):
          _fail(f"--config.predict.{key}={p[key]}: no such file or folder: {part}")


# 'gs://bucket/x', 's3://...': every file is written through the local file system (os, Orbax on
# local paths), which would silently make a local directory 'gs:/bucket/x' on each host.
URL_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def check_dir_path(path: str, flag: str) -> None:
  """`path` is a local directory or can be created as one (no file in the way, not a URL)."""
  if not str(path).strip():
    _fail(f"{flag} is empty: give a directory")
  _check_tilde(flag, path)
  if URL_RE.match(str(path)):
    _fail(f"{flag}={path} is a URL; outputs are written through the local file system: give a "
          "directory path (on a multi-host run one every host sees, e.g. NFS, Filestore or a "
          "bucket mounted with gcsfuse)")
  if os.path.islink(path) and not os.path.exists(path):  # was "not writable: File exists"
    _fail(f"{flag}={path} is a symbolic link to {os.readlink(path)}, which does not exist (a disk "
          "not mounted?)")
  blocking = io.file_in_the_way(path)
  if blocking == os.path.abspath(path):
    _fail(f"{flag}={path} is a file, not a directory")
  if blocking:
    _fail(f"{flag}={path} cannot be created: {blocking} is a file, not a directory")


def check_workdir(workdir: str, flag: str = "--workdir") -> None:
  """The workdir (or another output folder, `flag`) is (or can be created as) a writable
  directory; creates it when missing."""
  check_dir_path(workdir, flag)
  try:
    io.probe_writable(workdir)
  except OSError as e:
    _fail(f"{flag}={workdir} is not writable: {e.strerror or e}")


def check_shell_paths(config: ml_collections.ConfigDict, workdir: str | None = None) -> None:
  """No path is empty or starts with '~': the shell expands '~' only at the start of a word, so
  `--workdir=~/runs/x` reaches us as is (and would make a folder named '~' here)."""
  if workdir is not None:
    if not str(workdir).strip():
      _fail("--workdir is empty: give the run's directory")
    _check_tilde("--workdir", workdir)
  for key, value in config_lib.leaves(config):
    for v in (value if isinstance(value, (tuple, list)) else (value,)):
      if isinstance(v, str):
        _check_tilde(f"--config.{key}", v)


def _check_tilde(flag: str, value: str) -> None:
  for part in str(value).split(","):  # predict.input/mask may list several paths
    if part.strip().startswith("~"):
      _fail(f"{flag}={value}: the shell does not expand '~' after '='; give the full path "
            f"(e.g. {os.path.expanduser(part.strip())})")
