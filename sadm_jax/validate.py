"""Up-front checks of a config and its workdir: one-line `ConfigError`s before any data are loaded or compiled."""

from __future__ import annotations

import math
import re

import ml_collections

from sadm_jax import config as config_lib, distributed  # (neither imports JAX)
from sadm_jax.data.layout import NUM_FOLDS, SPLIT_NAMES  # (no JAX: os, re)
from sadm_jax.validate_paths import (DATA_STAGES, _fail, check_paths, check_shell_paths,
                                     check_workdir)

ConfigError = config_lib.ConfigError  # raised by every check (`_fail`); callers catch it here


# Every enum-like field and its accepted values (tests/test_cli_errors.py checks these against the
# constants of the modules that use them).
CHOICES = {
    "model.dtype": ("float32", "bfloat16"),
    "diffusion.noise": ("simplex", "gaussian"),
    "optimizer.name": ("adam", "adamw"),
    "data.slice_sampling": ("brain", "uniform"),
    "sadm.mode": ("draem", "brats", "atlas"),
    "sadm.loss": ("bce", "dice"),
    "evaluate.combination": ("sum", "residual", "segmentation", "weighted", "residual_only",
                             "seg_only"),
    "evaluate.residual_mode": ("ssim", "l1", "l2"),
    "evaluate.threshold_method": ("exact", "bisection"),
    "evaluate.dtype": ("float32", "bfloat16"),
    "demo.size": ("default", "tiny"),
}
EVALUATE_METHODS = ("threshold", "cddpm", "sadm")
EVALUATE_TEST_SETS = ("Brats21", "ATLAS_v2", "MSLUB", "WMH", "DRAEM")
FSDP_RULE_KINDS = ("fsdp", "replicate")
MODEL_NAMES = ("encoder", "unet", "spark", "segnet")  # model.names (describe.model_specs)
# model.names of the training tasks stage aot can compile (`train.aot.TASKS`, which imports JAX)
AOT_MODEL_NAMES = (("encoder", "unet"), ("spark",), ("encoder", "unet", "segnet"))
# SparK's ResNet-50 encoder sees slices whose sides are multiples of its stride (models.resnet).
SPARK_GRID_MULTIPLE = 32
SEGNET_DEPTH = 4  # models.segnet.SegUnet's levels (not a config setting)
TRAINING_STAGES = ("spark", "cddpm", "sadm")


def _as_tuple(key: str, unknown) -> str:
  """For values given as one string ('Brats21,WMH' is one name): the tuple they meant."""
  if not any("," in str(v) for v in unknown):
    return ""
  meant = tuple(p.strip() for v in unknown for p in str(v).split(",") if p.strip())
  return f", as a tuple: --config.{key}=\"{meant!r}\""


def check_choices(config: ml_collections.ConfigDict) -> None:
  for key, allowed in CHOICES.items():
    value = config_lib.at(config, key)
    if value not in allowed:
      _fail(f"--config.{key}={value!r} is not one of {', '.join(map(repr, allowed))}")
  unknown = [s for s in config.data.splits if s not in SPLIT_NAMES]
  if config.stage == "prepare" and unknown:  # e.g. 'IXI_test,WMH_val' given as one string
    _fail(f"--config.data.splits has unknown split(s) {unknown}; expected a subset of "
          f"{', '.join(SPLIT_NAMES)}, as a tuple: --config.data.splits=\"('IXI_test', 'WMH_val')\"")
  names = tuple(config.model.names)  # e.g. 'encoder,unet' given as one string
  if config.stage == "describe" and (not names or any(n not in MODEL_NAMES for n in names)):
    _fail(f"--config.model.names={names!r} must name 1 or more of "
          f"{', '.join(map(repr, MODEL_NAMES))}, as a tuple: "
          "--config.model.names=\"('encoder', 'unet')\"")
  if config.stage == "aot" and names not in AOT_MODEL_NAMES:
    _fail(f"--config.model.names={names!r}: stage aot compiles a training task's step, one of "
          f"{'; '.join(map(repr, AOT_MODEL_NAMES))} (the stage configs set it: give "
          "--config=configs/cddpm.py, spark_pretrain.py or sadm_*.py with --config.stage=aot)")
  unknown = [m for m in config.evaluate.methods if m not in EVALUATE_METHODS]
  if config.stage in ("evaluate", "demo") and unknown:
    _fail(f"--config.evaluate.methods has unknown method(s) {unknown}; expected a subset of "
          f"{', '.join(map(repr, EVALUATE_METHODS))}{_as_tuple('evaluate.methods', unknown)}")
  unknown = [s for s in config.evaluate.test_sets if s not in EVALUATE_TEST_SETS]
  if config.stage in ("evaluate", "demo", "reproduce") and unknown:
    _fail(f"--config.evaluate.test_sets has unknown set(s) {unknown}; expected a subset of "
          f"{', '.join(map(repr, EVALUATE_TEST_SETS))}{_as_tuple('evaluate.test_sets', unknown)}")
  if config.stage == "reproduce":  # the claims read these rows: without them, all "do NOT hold"
    from sadm_jax.reproduce import CLAIM_METHODS, PATHOLOGIES
    for key, needed in (("methods", CLAIM_METHODS), ("test_sets", PATHOLOGIES)):
      lacking = [v for v in needed if v not in config.evaluate[key]]
      if lacking:
        _fail(f"--config.evaluate.{key}={tuple(config.evaluate[key])!r} lacks "
              f"{', '.join(map(repr, lacking))}: the paper's claims (stage reproduce) need "
              f"evaluate.{key} {', '.join(map(repr, needed))}")
  for key in ("methods", "test_sets"):  # twice: evaluated twice and reported as two folds
    values = list(config.evaluate[key])
    twice = sorted({v for v in values if values.count(v) > 1})
    if config.stage in ("evaluate", "demo", "reproduce") and twice:
      _fail(f"--config.evaluate.{key}={tuple(values)!r} lists {', '.join(map(repr, twice))} "
            "more than once")


def _is_int(v) -> bool:
  return isinstance(v, int) and not isinstance(v, bool)


def _ints(values, low: int) -> bool:
  """`values` is a non-empty sequence of ints >= low."""
  return (isinstance(values, (tuple, list)) and len(values) > 0
          and all(_is_int(v) and v >= low for v in values))


def check_finite(config: ml_collections.ConfigDict) -> None:
  """No number in the config is NaN or ±Inf (`inf` passes every `> 0` check: a learning rate of
  inf would train to a NaN loss). `predict.threshold` has its own message (check_paths)."""
  for key, value in config_lib.leaves(config):
    if key != "predict.threshold" and any(
        isinstance(v, float) and not math.isfinite(v)
        for v in (value if isinstance(value, (tuple, list)) else (value,))):
      _fail(f"--config.{key}={value!r} must be finite (not NaN or ±Inf)")


def check_ranges(config: ml_collections.ConfigDict) -> None:
  """Numbers every stage may read (diffusion, networks, combination, anomalies) lie in range."""
  d, u, e = config.diffusion, config.model.unet, config.model.encoder
  if not d.num_timesteps > 0:
    _fail(f"--config.diffusion.num_timesteps={d.num_timesteps} must be > 0")
  ts = d.ensemble_timesteps  # indices into the schedule: out of range they would be clipped
  if not (_ints(ts, 0) and max(ts) < d.num_timesteps):
    _fail(f"--config.diffusion.ensemble_timesteps={tuple(ts)!r} must be 1 or more timesteps in "
          f"[0, {d.num_timesteps - 1}] (diffusion.num_timesteps={d.num_timesteps})")
  for key, low, strict in (("octaves", 1, False), ("frequency", 0, True),
                           ("persistence", 0, True), ("cosine_s", 0, False),
                           ("p2_gamma", 0, False)):
    if not (d[key] > low if strict else d[key] >= low):
      _fail(f"--config.diffusion.{key}={d[key]} must be {'>' if strict else '>='} {low}")
  if not 0 < d.max_beta <= 1:
    _fail(f"--config.diffusion.max_beta={d.max_beta} must be in (0, 1]")
  if not 0 <= e.drop_path_rate < 1:
    _fail(f"--config.model.encoder.drop_path_rate={e.drop_path_rate} must be in [0, 1)")
  for key in ("cond_dim", "width"):
    if not e[key] > 0:
      _fail(f"--config.model.encoder.{key}={e[key]} must be > 0")
  if not (_ints(e.stage_sizes, 1) and len(e.stage_sizes) == 4):
    _fail(f"--config.model.encoder.stage_sizes={tuple(e.stage_sizes)!r} must be 4 block counts "
          ">= 1 (ResNet-50: (3, 4, 6, 3))")
  for key in ("model_channels", "num_res_blocks", "num_head_channels"):
    if not u[key] >= 1:
      _fail(f"--config.model.unet.{key}={u[key]} must be >= 1")
  if not _ints(u.channel_mult, 1):
    _fail(f"--config.model.unet.channel_mult={tuple(u.channel_mult)!r} must be 1 or more "
          "multipliers >= 1")
  factors = tuple(2 ** k for k in range(len(u.channel_mult)))  # ds of each level
  wrong = [r for r in u.attention_resolutions if r not in factors]
  if wrong:  # the reference's (3, 6, 12) matched none: no attention outside the middle (Q2)
    _fail(f"--config.model.unet.attention_resolutions={tuple(u.attention_resolutions)!r} must "
          f"be downsample factors of the UNet's levels {factors}; "
          f"{', '.join(map(str, wrong))} match none (Q2)")
  widths = {u.model_channels * u.channel_mult[-1]: "the middle block's"}  # attention blocks
  widths.update({u.model_channels * m: f"the {2 ** k}x-downsampled level's"
                 for k, m in enumerate(u.channel_mult) if 2 ** k in u.attention_resolutions})
  for width, where in widths.items():
    if width % u.num_head_channels:
      _fail(f"--config.model.unet.num_head_channels={u.num_head_channels} must divide the "
            f"{width} channels of {where} attention")
  if not config.model.spark.decoder_width >= 32:
    _fail(f"--config.model.spark.decoder_width={config.model.spark.decoder_width} must be >= 32 "
          "(its 5 decoder stages halve it)")
  if not config.sadm.segnet_wf >= 0:
    _fail(f"--config.sadm.segnet_wf={config.sadm.segnet_wf} must be >= 0 (widths 2^(wf+i))")
  if not 0 <= config.anomaly.p_anomalous <= 1:
    _fail(f"--config.anomaly.p_anomalous={config.anomaly.p_anomalous} must be in [0, 1]")
  ev = config.evaluate
  if not 0 <= ev.lam <= 1:
    _fail(f"--config.evaluate.lam={ev.lam} must be in [0, 1]")
  for key in ("median_size", "erode_mask", "min_component_size"):
    if not ev[key] >= 0:
      _fail(f"--config.evaluate.{key}={ev[key]} must be >= 0 (0 = off)")
  if not config.data.fold >= 0:
    _fail(f"--config.data.fold={config.data.fold} must be >= 0")
  if not config.data.fold < NUM_FOLDS:  # was: '.../IXI_train_fold99.csv: split file not found'
    _fail(f"--config.data.fold={config.data.fold} must be < {NUM_FOLDS} (the IXI folds: "
          f"IXI_train_fold0..{NUM_FOLDS - 1})")
  if config.mesh.num_devices < 0:  # (predict's batches of -1 scans held none: nothing predicted)
    _fail(f"--config.mesh.num_devices={config.mesh.num_devices} must be >= 0 (0 = all)")
  if not 0 <= config.seed < 2 ** 32:  # grain's sampler: "Seed should be positive 32-bit integer."
    _fail(f"--config.seed={config.seed} must be in [0, 2**32 - 1]")


def check_training(config: ml_collections.ConfigDict) -> None:
  """Step counts, cadences, batch size, learning rate: what needs no device count. The demo and
  the reproduction train with these too, their steps and learning rates aside (`demo.*`)."""
  t = config.train
  budgets = config.stage in ("demo", "reproduce")  # (check_budgets)
  if t.num_steps < 0 and not budgets:
    _fail(f"--config.train.num_steps={t.num_steps} must be >= 0 (0 = use train.num_epochs)")
  if not t.num_steps and t.num_epochs <= 0 and not budgets:
    _fail(f"--config.train.num_epochs={t.num_epochs} must be > 0 (or set train.num_steps > 0)")
  for key in ("log_every", "eval_every", "checkpoint_every", "keep_checkpoints", "batch_size"):
    if t[key] <= 0:
      _fail(f"--config.train.{key}={t[key]} must be > 0")
  if config.mesh.fsdp_min_size < 0:
    _fail(f"--config.mesh.fsdp_min_size={config.mesh.fsdp_min_size} must be >= 0")
  if config.data.loader_workers < 0:
    _fail(f"--config.data.loader_workers={config.data.loader_workers} must be >= 0 (0 = in this "
          "process)")
  if not config.optimizer.learning_rate > 0 and not budgets:
    _fail(f"--config.optimizer.learning_rate={config.optimizer.learning_rate} must be > 0")
  o = config.optimizer
  for key in ("b1", "b2"):
    if not 0 <= o[key] < 1:
      _fail(f"--config.optimizer.{key}={o[key]} must be in [0, 1)")
  for key, note in (("eps", ""), ("weight_decay", ""), ("grad_clip_norm", " (0 = no clipping)")):
    if not o[key] >= 0:
      _fail(f"--config.optimizer.{key}={o[key]} must be >= 0{note}")
  if o.name == "adam" and o.weight_decay:  # only AdamW decays (train.state.make_optimizer)
    _fail(f"--config.optimizer.weight_decay={o.weight_decay} is not used by "
          "optimizer.name='adam' (no weight decay); use optimizer.name=adamw for decoupled decay")
  for key in ("loader_threads", "prefetch_batches"):
    if config.data[key] <= 0:
      _fail(f"--config.data.{key}={config.data[key]} must be > 0")
  if config.data.val_slices_per_volume <= 0:
    _fail(f"--config.data.val_slices_per_volume={config.data.val_slices_per_volume} must be > 0")
  if config.sadm.repeat < 0:
    _fail(f"--config.sadm.repeat={config.sadm.repeat} must be >= 0")
  for key in ("weak_train_rows", "weak_val_rows"):  # [start, stop) rows of <set>_val.csv
    rows = config.sadm[key]
    if rows is not None and not (
        len(rows) == 2 and all(isinstance(r, int) and not isinstance(r, bool) for r in rows)
        and 0 <= rows[0] < rows[1]):
      _fail(f"--config.sadm.{key}={tuple(rows)!r} must be a (start, stop) pair of row numbers "
            "with 0 <= start < stop (or unset: the reference rows)")
  for rule in config.mesh.fsdp_rules:
    try:
      pattern, kind = rule
      re.compile(pattern)
    except (TypeError, ValueError, re.error) as e:
      _fail(f"--config.mesh.fsdp_rules has a bad rule {rule!r} ({e}); expected (regex, kind) pairs")
    if kind not in FSDP_RULE_KINDS:
      _fail(f"--config.mesh.fsdp_rules: rule {rule!r} has kind {kind!r}; expected one of "
            f"{', '.join(map(repr, FSDP_RULE_KINDS))}")
  u = config.model.unet  # every UNet width, a multiple of model_channels, is GroupNorm'ed
  if (config.stage == "cddpm" or budgets) and (u.num_groups <= 0
                                                or u.model_channels % u.num_groups):
    _fail(f"--config.model.unet.model_channels={u.model_channels} is not divisible by "
          f"num_groups={u.num_groups} (GroupNorm)")


def _grid_multiple(config: ml_collections.ConfigDict) -> tuple[int, str]:
  """(what a training stage's slice sides must be a multiple of, why); (1, '') for the others.
  Found up front, not after the data are preprocessed, when the first model is initialised."""
  if config.stage == "spark":
    return SPARK_GRID_MULTIPLE, "its ResNet-50's stride"
  if config.stage in ("cddpm", "demo", "reproduce"):  # the last two train a cDDPM first
    unet = 2 ** (len(config.model.unet.channel_mult) - 1)  # the UNet halves the slice per level
    if unet > SPARK_GRID_MULTIPLE:
      return unet, f"its UNet's {len(config.model.unet.channel_mult) - 1} downsamplings"
    return SPARK_GRID_MULTIPLE, "its ResNet-50 encoder's stride"
  if config.stage == "sadm":
    if config.sadm.use_cddpm:
      return SPARK_GRID_MULTIPLE, "the frozen cDDPM's ResNet-50 encoder's stride"
    return 2 ** (SEGNET_DEPTH - 1), f"its SegUnet's {SEGNET_DEPTH - 1} downsamplings"
  return 1, ""


def check_budgets(config: ml_collections.ConfigDict) -> None:
  """The demo's and the reproduction's stage budgets (`demo.*`, `reproduce.repeats`): refused
  before the cohort is built, not when the first stage that reads them starts."""
  d = config.demo
  for key, low in (("spark_steps", 0), ("cddpm_steps", 1), ("sadm_steps", 1)):
    if not (_is_int(d[key]) and d[key] >= low):
      _fail(f"--config.demo.{key}={d[key]} must be >= {low}"
            + (" (0 = no SparK pretraining)" if key == "spark_steps" else ""))
  for stage in ("spark", "cddpm", "sadm"):
    if not d[f"{stage}_learning_rate"] > 0 and (stage != "spark" or d.spark_steps):
      _fail(f"--config.demo.{stage}_learning_rate={d[f'{stage}_learning_rate']} must be > 0")
  if not (_is_int(d.seed) and d.seed >= 0):  # numpy's "expected non-negative integer"
    _fail(f"--config.demo.seed={d.seed} must be >= 0")
  repeats = config.reproduce.repeats  # repeat k trains on IXI fold k (`reproduce.members`)
  if config.stage == "reproduce" and not 1 <= repeats <= NUM_FOLDS:
    _fail(f"--config.reproduce.repeats={repeats} must be in [1, {NUM_FOLDS}] (repeat k trains on "
          f"the IXI fold k: IXI_train_fold0..{NUM_FOLDS - 1})")


def check_preprocess(config: ml_collections.ConfigDict) -> None:
  """`data.preprocess` makes a preprocessing chain (3-D crop, percentiles, factor, ...)."""
  crop = config.data.preprocess.crop_size  # ints (the chain would truncate 100.5 to 100)
  if not (_ints(crop, 1) and len(crop) == 3):
    _fail(f"--config.data.preprocess: crop_size must be 3 positive ints, got {tuple(crop)!r}")
  try:
    cfg = config_lib.preprocess_config(config)  # imports scipy: only the stages that preprocess
  except (TypeError, ValueError) as e:
    _fail(f"--config.data.preprocess: {e}")
  grid = [-(-c // cfg.downsample) for c in cfg.crop_size[:2]]  # the working grid's slice side
  multiple, why = _grid_multiple(config)
  if multiple > 1 and any(g % multiple for g in grid):
    _fail(f"--config.data.preprocess: stage {config.stage} needs slices whose sides are multiples "
          f"of {multiple} ({why}), got {grid[0]}x{grid[1]} (crop_size "
          f"{cfg.crop_size[0]}x{cfg.crop_size[1]} / downsample {cfg.downsample})")
  spark = config.stage == "spark" or (config.stage in ("demo", "reproduce")
                                      and config.demo.spark_steps > 0)  # (pretrains first)
  if spark:  # round(h·w·(1 − mask_ratio)) visible patches (models.spark)
    h, w = grid[0] // SPARK_GRID_MULTIPLE, grid[1] // SPARK_GRID_MULTIPLE
    ratio = config.model.spark.mask_ratio
    keep = round(h * w * (1.0 - ratio))
    if not 0 < keep < h * w:
      _fail(f"--config.model.spark.mask_ratio={ratio} leaves {keep} of the {h}x{w} patches "
            "visible; SparK needs some visible and some hidden (0.65: 3 of 3x3)")


def check_mesh(config: ml_collections.ConfigDict, device_count: int, process_count: int) -> None:
  """The mesh against the visible devices, and the global batch against the mesh."""
  t = config.train
  n_dev = int(config.mesh.num_devices) or device_count
  if n_dev > device_count:
    _fail(f"--config.mesh.num_devices={config.mesh.num_devices}: {device_count} device(s) are "
          f"visible (0 = all)")
  if process_count > 1 and n_dev < device_count and n_dev % process_count:
    _fail(f"--config.mesh.num_devices={config.mesh.num_devices}: a mesh over {process_count} "
          f"processes takes the same number of devices from each; give a multiple of "
          f"{process_count}, or 0 (all)")
  if t.batch_size % n_dev or t.batch_size % process_count:
    _fail(f"--config.train.batch_size={t.batch_size} (global) is not divisible by the {n_dev} "
          f"device(s) of the mesh" + (f" and {process_count} processes" if process_count > 1
                                      else ""))


def check_values(config: ml_collections.ConfigDict, stages) -> ml_collections.ConfigDict:
  """The stage, choices and training values: the checks that read no file (a sweep runs them on
  every member before the first one starts, when the paths later members read may not exist
  yet); returns the resolved config."""
  if config.stage not in stages:
    _fail(f"--config.stage={config.stage!r} is not one of {', '.join(map(repr, stages))}")
  resolved = config_lib.resolve(config)
  try:
    distributed.check_settings(resolved.distributed)
  except ValueError as e:
    _fail(str(e))
  check_choices(resolved)
  check_finite(resolved)
  check_ranges(resolved)
  if config.stage in TRAINING_STAGES + ("demo", "reproduce"):  # (the last two train 3 models)
    check_training(resolved)
  if config.stage in ("demo", "reproduce"):
    check_budgets(resolved)
  return resolved


def check_static(config: ml_collections.ConfigDict, stages, workdir: str | None = None
                 ) -> ml_collections.ConfigDict:
  """Every check that needs neither JAX nor a change to the workdir (the CLI runs it before
  importing JAX, so a wrong value is refused in a fraction of a second); returns the resolved
  config. `workdir` is only looked at (not empty, no '~'; does the run resume?)."""
  resolved = check_values(config, stages)
  check_shell_paths(resolved, workdir)
  check_paths(resolved, workdir)
  if config.stage in DATA_STAGES + ("demo", "reproduce"):
    check_preprocess(resolved)
  return resolved


def validate(config: ml_collections.ConfigDict, workdir: str, stages) -> None:
  """Every check for `config.stage`; raises ConfigError (one line). The workdir check comes last:
  it creates a missing workdir, which only a start that passed every other check may do."""
  resolved = check_static(config, stages, workdir)
  if config.stage in TRAINING_STAGES + ("demo", "reproduce"):  # (the last two train too)
    import jax
    check_mesh(resolved, jax.device_count(), jax.process_count())
  check_workdir(workdir)
  if config.stage == "predict" and config.predict.output:
    check_workdir(config.predict.output, "--config.predict.output")
