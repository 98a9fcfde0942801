"""`stage=reproduce`: the paper's Table 1 on the demo cohort as one sweep, its table, and the three claims checked on test and validation."""

from __future__ import annotations

import json
import math
import os
import time

import ml_collections

from sadm_jax.sweeps import members as members_lib
from sadm_jax.sweeps.members import Member, flag
from sadm_jax.utils import io

# Stage-II variants of Table 1: member name -> (sadm.mode, with the cDDPM).
VARIANTS = {"sadm_draem": ("draem", True), "sadm_brats": ("brats", True),
            "sadm_atlas": ("atlas", True), "unet_draem": ("draem", False),
            "unet_brats": ("brats", False), "unet_atlas": ("atlas", False)}
# sadm.mode -> the evaluation's train_anomalies label (sadm_jax.evaluate: SADM_MODES).
ANOMALIES = {"draem": "draem", "brats": "Brats21", "atlas": "ATLAS_v2"}
PATHOLOGIES = ("Brats21", "ATLAS_v2", "WMH")  # the claims' "every pathology" (DRAEM is synthetic)
CLAIM_METHODS = ("cddpm", "sadm")  # evaluate.methods the claims compare (sadm: SADM and UNet rows)
# The claims compare Dice at the validation-selected threshold τ: the mean test Dice ('dice') and
# the Dice of the pooled validation voxels at τ ('val_pooled_dice'), means over repeats.
METRICS = {"test": "dice", "validation": "val_pooled_dice"}
# On validation a weakly supervised run's own pathology is scored on its held-out rows only (Q15);
# its row carries its cDDPM's pooled Dice on those same rows, the cDDPM side of claim 2's lift.
SAME_ROWS = "cddpm_val_pooled_dice_same_rows"
LIFT = 0.05  # claim 2: "a lot" = at least 5 Dice points above the cDDPM on the labelled pathology
COLLAPSE = 0.75  # claim 3: below the cDDPM and below 3/4 of the SADM trained on the same anomalies
NAMES = {("cddpm", "none"): "cDDPM", ("threshold", "none"): "threshold",
         **{(m, a): f"{'SADM' if m == 'sadm' else 'UNet'}-{n}" for m in ("sadm", "unet")
            for a, n in (("draem", "DRAEM"), ("Brats21", "BraTS"), ("ATLAS_v2", "ATLAS"))}}
STATEMENTS = {
    "claim1": "SADM trained with DRAEM anomalies beats its own cDDPM on every pathology",
    "claim2": "labels of one pathology lift that pathology by >= 5 Dice points over the cDDPM, "
              "while every unseen pathology stays at or above the cDDPM",
    "claim3": "the input-only UNet collapses on every pathology it was not trained on: below the "
              "cDDPM and below 3/4 of the SADM trained on the same anomalies",
}




class ReproduceError(ValueError):
  """A member of the reproduction failed (its own error is printed above); one line."""


# ----------------------------------------------------------------------------- the sweep


def cohort_root(config: ml_collections.ConfigDict, workdir: str) -> str:
  """The demo cohort's folder (DATA_DIR): `demo.root`, else W/demo_data."""
  return config.demo.root or os.path.join(workdir, "demo_data")


def cohort(config: ml_collections.ConfigDict, workdir: str) -> str:
  """Generates the demo cohort (skipped when complete, e.g. a demo run's, `demo.root`); every
  demo cohort has >= demo_job.MIN_LABELLED labelled BraTS- and ATLAS-like validation volumes for
  weak supervision. Returns DATA_DIR."""
  from sadm_jax import demo_job
  from sadm_jax.data import synthetic
  root = cohort_root(config, workdir)
  t = time.time()
  summary = synthetic.generate_cohort(root, demo_job.demo_config(config))
  done = "complete already, reused" if summary["skipped"] else f"{time.time() - t:.1f} s"
  print(f"demo cohort: {root} ({done})", flush=True)
  return root


def members(config: ml_collections.ConfigDict, workdir: str, data_dir: str) -> list[Member]:
  """prepare → (SparK) → cDDPM → six stage-II runs → one evaluation, per repeat where it applies;
  every member is `config` plus `--config.k=v` overrides (its stage, budget and inputs)."""
  from sadm_jax import validate
  validate.check_budgets(config)  # (the CLI checked them already; a caller in Python may not)
  d, repeats = config.demo, int(config.reproduce.repeats)
  common = (flag("data.data_dir", data_dir),)
  budget = lambda s: (flag("train.num_steps", int(d[f"{s}_steps"])),
                      flag("optimizer.learning_rate", float(d[f"{s}_learning_rate"])))
  out = [Member("prepare", config, common + ("--config.stage=prepare",), report=False)]
  trained = []
  for k in range(repeats):
    fold = common + (f"--config.data.fold={k}",)
    cddpm = fold + ("--config.stage=cddpm",) + budget("cddpm")
    if int(d.spark_steps) > 0:
      out.append(Member(f"spark-{k}", config, fold + ("--config.stage=spark",) + budget("spark"),
                        after=("prepare",), report=False))
      cddpm += (f"--config.model.encoder.pretrained_workdir={{workdir}}/spark-{k}",)
    out.append(Member(f"cddpm-{k}", config, cddpm, after=("prepare",) + (
        (f"spark-{k}",) if int(d.spark_steps) > 0 else ()), report=False))
    for name, (mode, with_cddpm) in VARIANTS.items():
      o = fold + ("--config.stage=sadm", f"--config.sadm.mode={mode}",
                  flag("sadm.use_cddpm", with_cddpm)) + budget("sadm")
      o += (f"--config.sadm.repeat={k}",) if mode != "draem" else ()
      o += (f"--config.sadm.cddpm_workdir={{workdir}}/cddpm-{k}",) if with_cddpm else ()
      out.append(Member(f"{name}-{k}", config, o, report=False,
                        after=(f"cddpm-{k}",) if with_cddpm else ("prepare",)))
      trained.append(f"{name}-{k}")
  dirs = [f"{{workdir}}/{t}" for t in trained]
  out.append(Member("evaluate", config, common + (
      "--config.stage=evaluate", flag("evaluate.sadm_workdirs", dirs),
      "--config.evaluate.cddpm_workdir="), after=tuple(trained)))  # cDDPMs: the SADM runs' own
  return out


def _ignored(key: str) -> bool:
  """Keys of the reproduce config that no member runs differently for: `reproduce.*` (repeats adds
  members) and the budgets, which reach the members that use them as their own train.num_steps
  and optimizer.learning_rate overrides (demo.size, demo.seed, demo.root make another cohort)."""
  return key.startswith("reproduce.") or key in {
      f"demo.{s}_{k}" for s in ("spark", "cddpm", "sadm") for k in ("steps", "learning_rate")}


def stale_members(ms: list[Member], workdir: str) -> list[tuple[str, str]]:
  """(member, why) for every finished member (DONE) that is not what this command would run: its
  saved config.json differs from the member's config now (`_ignored` keys aside), or a member
  it depends on has not finished (it will run, so this one was built on another). The sweep
  runner would only warn and skip them: the table and verdicts would be the old runs' under the
  new command (`sweeps.runner.changed_keys`: a moved workdir, or a field added to the base config
  since, is no change)."""
  from sadm_jax.sweeps import runner
  rerun, out = set(), []
  for m in members_lib.ordered(ms):
    if not runner.is_done(workdir, m.name):
      rerun.add(m.name)
      continue
    why = ""
    deps = [d for d in m.after if d in rerun]
    if deps:
      why = f"built on {', '.join(deps)}, which will run again"
    else:
      now = runner.config_json(members_lib.member_config(m, workdir))
      saved = runner.saved_config_json(os.path.join(workdir, m.name))
      if saved is None:
        why = "no readable config.json to compare"
      else:  # a moved workdir is the same run: its paths compare as if here
        keys = runner.changed_keys(saved, now, workdir, _ignored)
        if keys:
          why = "config differs in " + ", ".join(keys[:4]) + (
              f" and {len(keys) - 4} more" if len(keys) > 4 else "")
    if why:
      out.append((m.name, why))
      rerun.add(m.name)
  return out


# ----------------------------------------------------------------------------- the claims


def _means(rows: list[dict], key: str) -> dict[tuple[str, str, str], float]:
  from sadm_jax.evaluate import report
  return {k: v[0] for k, v in report.fold_summary(rows, key).items()}


def _compare(means: dict, lhs, op: str, rhs, test_set: str, factor=1.0, margin=0.0,
             rhs_on_lhs_rows: bool = False) -> dict:
  """One comparison `lhs op factor · rhs + margin` on test and on validation.

  rhs_on_lhs_rows: on validation, rhs is the number on lhs's own (held-out) rows (SAME_ROWS).
  """
  rule = f"{NAMES[lhs]} {op} " + (f"{factor:g} × " if factor != 1 else "") + NAMES[rhs] + (
      f" + {100 * margin:g} points" if margin else "")
  out = {"test_set": test_set, "rule": rule}
  for split in ("test", "validation"):
    a, b = (means[split].get((*m, test_set), math.nan) for m in (lhs, rhs))
    if rhs_on_lhs_rows and split == "validation":
      b = means["same_rows"].get((*lhs, test_set), math.nan)
      out["validation_rows"] = f"{NAMES[rhs]} on {NAMES[lhs]}'s held-out rows"
    x = factor * b + margin
    ok = math.isfinite(a) and math.isfinite(b) and {">": a > x, ">=": a >= x, "<": a < x}[op]
    out[split] = {NAMES[lhs]: a if math.isfinite(a) else None,
                  NAMES[rhs]: b if math.isfinite(b) else None}
    out[f"holds_on_{split}"] = bool(ok)
  return out


def check_claims(rows: list[dict]) -> dict:
  """The paper's three claims (README "Reproducing Table 1") on the evaluation's rows, each on test and validation.

  Each claim is a list of comparisons of mean Dice at τ (METRICS) per pathology; it holds on a
  split when there is at least one and every one holds there (a missing number fails it):
    claim1: SADM-DRAEM > cDDPM on every pathology.
    claim2: for the BraTS- and ATLAS-labelled SADM: on its own pathology SADM ≥ cDDPM + LIFT,
            on every other pathology SADM ≥ cDDPM.
    claim3 ("collapses"): for each input-only UNet (DRAEM, BraTS, ATLAS) on every pathology it was
            not trained on: UNet < cDDPM and UNet < COLLAPSE × the SADM with the same anomalies.
  On validation a weakly supervised run's own pathology is scored on its held-out rows only, and
  so is the cDDPM it is compared with there (SAME_ROWS).
  """
  means = {split: _means(rows, key) for split, key in METRICS.items()}
  means["same_rows"] = _means(rows, SAME_ROWS)
  sets = list(PATHOLOGIES)  # all three: a set the evaluation skipped is missing numbers, not fewer
  cddpm, c = ("cddpm", "none"), {}
  c["claim1"] = [_compare(means, ("sadm", "draem"), ">", cddpm, s) for s in sets]
  c["claim2"] = []
  for label in ("Brats21", "ATLAS_v2"):
    for s in sets:
      c["claim2"].append(_compare(means, ("sadm", label), ">=", cddpm, s,
                                  margin=LIFT if s == label else 0.0, rhs_on_lhs_rows=s == label))
  c["claim3"] = []
  for anomalies in ("draem", "Brats21", "ATLAS_v2"):
    for s in [s for s in sets if s != anomalies]:
      c["claim3"] += [_compare(means, ("unet", anomalies), "<", cddpm, s),
                      _compare(means, ("unet", anomalies), "<", ("sadm", anomalies), s,
                               factor=COLLAPSE)]
  out = {"metric": dict(METRICS), "pathologies": sets}
  for name, comparisons in c.items():
    out[name] = {"statement": STATEMENTS[name], "comparisons": comparisons,
                 **{f"holds_on_{split}": bool(comparisons) and all(
                     x[f"holds_on_{split}"] for x in comparisons) for split in METRICS}}
  return out


def verdict_lines(claims: dict) -> list[str]:
  """The three verdicts and every comparison behind them, Dice in %."""
  pct = lambda v: "n/a" if v is None else f"{100 * v:.2f}"
  yes = lambda b: "holds" if b else "does NOT hold"
  lines = []
  for name in ("claim1", "claim2", "claim3"):
    cl = claims[name]
    lines.append(f"{name} ({cl['statement']}): on test {yes(cl['holds_on_test'])}, on validation "
                 f"{yes(cl['holds_on_validation'])}")
    for x in cl["comparisons"]:
      t, v = (" vs ".join(pct(n) for n in x[s].values()) for s in ("test", "validation"))
      v += " (both on the held-out rows)" if "validation_rows" in x else ""
      mark = lambda s: "✓" if x[f"holds_on_{s}"] else "✗"
      lines.append(f"  {x['test_set']}: {x['rule']}: test {t} {mark('test')}, "
                   f"validation {v} {mark('validation')}")
  return lines


# ----------------------------------------------------------------------------- the stage


def table_markdown(rows: list[dict], protocol: dict, claims: dict, repeats: int) -> str:
  from sadm_jax.evaluate import report
  return "\n".join([
      "# Table 1 on the demo cohort", "",
      "Rows: model × anomalies it was trained on; Dice = Dice at the threshold τ chosen on the "
      "validation split, ⌈Dice⌉ = per-volume oracle threshold, AUPRC per volume; in %, "
      f"{'mean ± population std over ' + str(repeats) + ' repeats' if repeats > 1 else 'one run'}"
      ". DRAEM = healthy IXI test volumes with synthetic DRAEM anomalies.", "",
      report.format_table(rows), "", report.protocol_text(protocol), "",
      "## The paper's claims (W/claims.json)", "", *[f"    {l}" for l in verdict_lines(claims)],
      ""])


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Runs (or resumes) the sweep in `workdir`, then writes report/{table.md,metrics.csv} and
  claims.json and prints the verdicts."""
  import jax

  from sadm_jax.evaluate import report
  from sadm_jax.sweeps import runner
  t0 = time.time()
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  ms = members(config, workdir, cohort_root(config, workdir))
  stale = stale_members(ms, workdir)
  if stale:
    raise ReproduceError(
        f"reproduce: {workdir} holds finished runs this command would not reproduce: "
        + "; ".join(f"{n} ({why})" for n, why in stale) + ". Remove them ("
        + " ".join(os.path.join(workdir, n) for n, _ in stale)
        + ") to train them again, or use a new --workdir")
  # After the check: another demo.seed or demo.size regenerates the cohort in place, under the
  # finished runs that were trained on it.
  cohort(config, workdir)
  outputs = [os.path.join(workdir, "claims.json"), os.path.join(workdir, "report", "table.md"),
             os.path.join(workdir, "report", "metrics.csv")]
  if jax.process_index() == 0:  # an earlier run's report is not this run's: gone until rewritten
    for path in outputs:
      if os.path.exists(path):
        os.remove(path)
  failed = runner.run_local(ms, workdir, runner=runner.run_inprocess,
                            primary=jax.process_index() == 0)
  if failed:
    raise ReproduceError(f"reproduce: {', '.join(failed)} failed (see above); the same command "
                       "retries them and skips the finished members")
  path = os.path.join(workdir, "evaluate", "report", "metrics.json")
  try:
    with open(path, encoding="utf-8") as f:
      saved = json.load(f)
    rows, protocol = list(saved["rows"]), saved["protocol"]
  except (OSError, ValueError, KeyError, TypeError) as e:  # a finished evaluation without its rows
    raise ReproduceError(f"reproduce: {path}: the evaluation's rows cannot be read ({e}); remove "
                         f"{os.path.join(workdir, 'evaluate')} to evaluate again") from None
  claims = check_claims(rows)
  claims["seconds_this_run"] = round(time.time() - t0, 1)
  # from each member's DONE: the time of the run that finished it (null: a marker made by hand)
  claims["member_seconds"] = {m.name: runner.done_seconds(workdir, m.name) for m in ms}
  text = table_markdown(rows, protocol, claims, int(config.reproduce.repeats))
  if jax.process_index() == 0:
    # claims.json last: once it is there, table.md and metrics.csv are this run's too
    io.write_text(os.path.join(workdir, "report", "metrics.csv"), report.metrics_csv(rows))
    io.write_text(os.path.join(workdir, "report", "table.md"), text)
    io.write_json(os.path.join(workdir, "claims.json"), claims)
    print(report.format_table(rows))
    print("\n".join(verdict_lines(claims)))
    print(f"reproduce: {claims['seconds_this_run']} s (members: "
          f"{sum(filter(None, claims['member_seconds'].values())):.0f} s); written: "
          f"{os.path.join(workdir, 'report', 'table.md')}, {os.path.join(workdir, 'claims.json')}",
          flush=True)
  return claims
