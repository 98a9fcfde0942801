"""The main job on the embedded demo cohort: cohort → prepare → (SparK) → cDDPM → SADM-DRAEM → evaluation → report."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import time

import ml_collections

from sadm_jax import config as config_lib
from sadm_jax.data import synthetic
from sadm_jax.utils import io

# The data set on which the demo checks the paper's ordering (SADM > cDDPM > threshold, Dice).
ORDERING_SET = "Brats21"
ORDERING = ("sadm", "cddpm", "threshold")
# Labelled BraTS- and ATLAS-like validation volumes in every demo cohort: the Table-1
# reproduction's weak supervision trains on >= 1 and tunes τ on >= 1 other, so it can run on
# the cohort of a demo run (`--config.demo.root=<demo workdir>/demo_data`).
MIN_LABELLED = 2


def demo_config(config: ml_collections.ConfigDict):
  """The cohort generator's CohortConfig for `config.demo` (size 'default' or 'tiny', seed), with
  >= MIN_LABELLED BraTS- and ATLAS-like validation volumes (the default has 5; tiny gets 2)."""
  sizes = {"default": synthetic.CohortConfig.default, "tiny": synthetic.CohortConfig.tiny}
  if config.demo.size not in sizes:
    raise ValueError(f"unknown demo.size {config.demo.size!r}; expected 'default' or 'tiny'")
  cfg = sizes[config.demo.size](seed=config.demo.seed)
  return dataclasses.replace(cfg, **{k: max(getattr(cfg, k), MIN_LABELLED)
                                     for k in ("n_brats21_val", "n_atlas_v2_val")})


def build_cohort(config: ml_collections.ConfigDict, workdir: str) -> str:
  """Generates the demo cohort (skipped when complete with the same config); returns DATA_DIR."""
  root = config.demo.root or os.path.join(workdir, "demo_data")
  start = time.time()
  summary = synthetic.generate_cohort(root, demo_config(config))
  montage = os.path.join(workdir, "demo_montage.png")
  if not summary["skipped"] or not os.path.exists(montage):  # a regenerated cohort: a new montage
    synthetic.write_montage(root, montage)
  logging.info("demo cohort at %s (%.1f s): %s", root, time.time() - start, summary)
  print(f"demo cohort: {root} ({time.time() - start:.1f} s); montage: {montage}")
  return root


def stage_dirs(workdir: str) -> dict[str, str]:
  """Workdir of each stage inside the demo workdir (evaluation writes eval/ and report/ at the top)."""
  return {"spark": os.path.join(workdir, "spark"), "cddpm": os.path.join(workdir, "cddpm"),
          "sadm": os.path.join(workdir, "sadm_draem"), "evaluate": workdir}


def stage_config(config: ml_collections.ConfigDict, stage: str, workdir: str
                 ) -> ml_collections.ConfigDict:
  """The config of one stage of the demo: `config` with the stage, its budget and its inputs set.

  Everything else (grid, model sizes, batch, seed, faithful flags, evaluation settings) is shared,
  so the SADM stage finds the cDDPM it expects and evaluation the grid both were trained on.
  """
  from sadm_jax import validate
  validate.check_budgets(config)  # (the CLI checked them already; a caller in Python may not)
  c = config.copy_and_resolve_references()
  m, dirs = config.demo, stage_dirs(workdir)
  c.stage = stage
  if stage == "spark":
    c.train.num_steps, c.optimizer.learning_rate = int(m.spark_steps), float(m.spark_learning_rate)
  elif stage == "cddpm":
    c.train.num_steps, c.optimizer.learning_rate = int(m.cddpm_steps), float(m.cddpm_learning_rate)
    if int(m.spark_steps) > 0:
      c.model.encoder.pretrained_workdir = dirs["spark"]
  elif stage == "sadm":
    c.train.num_steps, c.optimizer.learning_rate = int(m.sadm_steps), float(m.sadm_learning_rate)
    c.sadm.mode = "draem"
    c.sadm.cddpm_workdir = dirs["cddpm"]
  elif stage == "evaluate":
    c.evaluate.cddpm_workdir = dirs["cddpm"]
    c.evaluate.sadm_workdirs = (dirs["sadm"],)
  else:
    raise ValueError(f"unknown demo stage {stage!r}")
  return c


def _holds(means: dict[str, float]) -> bool:
  values = [means.get(k, float("nan")) for k in ORDERING]
  return bool(all(math.isfinite(v) for v in values) and values[0] > values[1] > values[2])


def ordering(rows: list[dict], test_set: str = ORDERING_SET) -> dict:
  """Whether SADM > cDDPM > threshold holds on `test_set`, on the test set and on validation.

  'dice': mean test Dice (at the validation threshold) of each method over its folds; 'val_dice':
  the same for the Dice on the pooled validation voxels at that threshold (`val_pooled_dice`),
  the evidence available without the test set. 'holds' is the test-set check the demo reports;
  'holds_on_validation' says whether validation agrees (a test-only win may be luck).
  """
  dice: dict[str, list[float]] = {}
  val: dict[str, list[float]] = {}
  for r in rows:
    if r.get("test_set") == test_set and r.get("method") in ORDERING:
      dice.setdefault(r["method"], []).append(float(r["dice"]))
      v = r.get("val_pooled_dice")
      if v not in (None, ""):
        val.setdefault(r["method"], []).append(float(v))
  means = {k: sum(v) / len(v) for k, v in dice.items() if v}
  val_means = {k: sum(v) / len(v) for k, v in val.items() if v}
  return {"test_set": test_set, "dice": means, "holds": _holds(means),
          "val_dice": val_means, "holds_on_validation": _holds(val_means)}


def _read_rows(workdir: str) -> list[dict]:
  with open(os.path.join(workdir, "report", "metrics.json"), encoding="utf-8") as f:
    return json.load(f)["rows"]


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Runs every stage of the demo in `workdir`; each stage resumes or skips when already done."""
  from sadm_jax.evaluate import run as evaluate_run
  from sadm_jax.train import cddpm, sadm, spark

  os.makedirs(workdir, exist_ok=True)
  with contextlib.suppress(FileNotFoundError):  # an earlier run's (its ordering, its report):
    os.remove(os.path.join(workdir, "demo_summary.json"))  # gone until this run writes its own
  times: dict[str, float] = {}
  t0 = time.time()
  data_dir = build_cohort(config, workdir)
  times["cohort"] = time.time() - t0
  config = config.copy_and_resolve_references()  # the stages read the cohort; the user's config
  config.data.data_dir = data_dir  # stays as given
  t = time.time()
  result: dict = {"prepare": config_lib.run_prepare(config, workdir)}
  times["prepare"] = time.time() - t
  dirs = stage_dirs(workdir)
  stages = (["spark"] if int(config.demo.spark_steps) > 0 else []) + ["cddpm", "sadm", "evaluate"]
  runners = {"spark": spark.run_spark, "cddpm": cddpm.run_cddpm, "sadm": sadm.run_sadm,
             "evaluate": evaluate_run.run}
  for stage in stages:
    t = time.time()
    print(f"--- demo stage {stage} → {dirs[stage]}", flush=True)
    result[stage] = runners[stage](stage_config(config, stage, workdir), dirs[stage])
    times[stage] = time.time() - t
  check = ordering(_read_rows(workdir))
  times["total"] = time.time() - t0
  pct = lambda key, k: f"{100 * check[key].get(k, math.nan):.2f}"
  verdict = "reproduced" if check["holds"] else "NOT reproduced"
  print(f"paper ordering on {check['test_set']} (test Dice, %): SADM {pct('dice', 'sadm')} > "
        f"cDDPM {pct('dice', 'cddpm')} > threshold {pct('dice', 'threshold')}: {verdict}")
  agrees = "agrees" if check["holds_on_validation"] else "does NOT agree"
  print(f"  on its validation split (pooled Dice at τ, %): SADM {pct('val_dice', 'sadm')}, cDDPM "
        f"{pct('val_dice', 'cddpm')}, threshold {pct('val_dice', 'threshold')}: {agrees}")
  print("stage times (s): " + ", ".join(f"{k} {v:.0f}" for k, v in times.items()))
  summary = {"ordering": check, "seconds": {k: round(v, 1) for k, v in times.items()},
             "report": os.path.join(workdir, "report", "report.md")}
  io.write_json(os.path.join(workdir, "demo_summary.json"), summary)
  result["summary"] = summary
  return result
