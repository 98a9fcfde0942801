"""Weak supervision end to end: SADM and the UNet trained on labelled BraTS/ATLAS rows, evaluated with τ from held-out rows."""

from __future__ import annotations

import collections
import csv
import dataclasses
import glob
import json
import os

import numpy as np
import pytest

from sadm_jax.evaluate import thresholds
from sadm_jax.train import sadm
from tests.helpers import metric_series


def test_weakly_supervised_runs_train_and_are_evaluated_on_held_out_rows(tiny_reproduction_run):
  """The Table-1 reproduction's weakly supervised members (tests/conftest.py: the CLI, in the
  background) and its evaluation of them: each computes only its held-out validation rows of
  the pathology it was trained on (the others train it), every row of the others, and takes τ
  from those rows (Q15)."""
  workdir = tiny_reproduction_run[0]
  for member in ("sadm_brats-0", "sadm_atlas-0", "unet_brats-0", "unet_atlas-0"):
    for key in ("train/loss", "val/loss"):
      series = metric_series(os.path.join(workdir, member), key)
      assert series and all(np.isfinite(v) for _, v in series), (member, key)
  evaluation = os.path.join(workdir, "evaluate")
  with open(os.path.join(evaluation, "eval", "process_0-of-1.json")) as f:
    computed = json.load(f)["computed"]
  # '<method>/<train anomalies>/<fold>/<test set>/<split>/<volume>' -> count per model and split
  count = collections.Counter(tuple(k.split("/")[i] for i in (0, 1, 3, 4)) for k in computed)
  val = {s: count["cddpm", "none", s, "val"] for s in ("Brats21", "ATLAS_v2")}
  assert min(val.values()) >= 2, val  # >= 1 row trains, >= 1 is held out
  with open(os.path.join(evaluation, "report", "metrics.csv"), newline="") as f:
    rows = {(r["method"], r["train_anomalies"], r["test_set"]): r for r in csv.DictReader(f)}
  with open(os.path.join(evaluation, "eval", "models.json")) as f:
    runs = {r["id"]: r for r in json.load(f)["runs"]}
  for method in ("sadm", "unet"):
    for label, mode in (("Brats21", "brats"), ("ATLAS_v2", "atlas")):
      train, held_out = sadm.weak_row_ranges(mode, val[label])
      # the training rows, re-derived by position, were the volumes the run recorded
      checked = runs[f"{method}/{label}/{rows[method, label, label]['fold']}"]["training_rows"]
      assert checked["verified"] and checked["rows"] == list(train), checked
      assert checked["split"] == f"{label}_val", checked
      n_held = held_out[1] - held_out[0]
      assert n_held >= 1 and train[1] - train[0] >= 1
      for test_set in ("Brats21", "ATLAS_v2"):
        own = test_set == label
        want = n_held if own else val[test_set]
        assert count[method, label, test_set, "val"] == want, (method, label, test_set)
        r = rows[method, label, test_set]
        assert r["n_val_volumes"] == str(want), (method, label, test_set)
        tau_rows = r["tau_rows"]
        assert tau_rows.startswith("held-out") if own else tau_rows == "all", tau_rows
        assert r["fold"].startswith("repeat0") and 0.0 <= float(r["dice"]) <= 1.0


def _maps(folder: str, names) -> tuple[list, list, list]:
  out = ([], [], [])
  for name in names:
    with np.load(os.path.join(folder, f"{name}.npz")) as z:
      for acc, key in zip(out, ("anomaly", "gt", "mask")):
        acc.append(z[key])
  return out


def test_weak_sadm_rows_carry_their_cddpm_on_the_same_held_out_rows(tiny_reproduction_run):
  """A weakly supervised SADM's own-pathology validation Dice comes from its held-out rows only;
  its row also carries its cDDPM's pooled Dice at τ on exactly those rows (computed here again
  from the stored maps), which the reproduction's claim 2 compares it with. The input-only UNet
  (no cDDPM) and the unlabelled pathologies (all rows on both sides) carry none."""
  evaluation = os.path.join(tiny_reproduction_run[0], "evaluate")
  with open(os.path.join(evaluation, "report", "metrics.csv"), newline="") as f:
    rows = {(r["method"], r["train_anomalies"], r["test_set"]): r for r in csv.DictReader(f)}
  key = "cddpm_val_pooled_dice_same_rows"
  eval_dir = os.path.join(evaluation, "eval")
  for label in ("Brats21", "ATLAS_v2"):
    for test_set in ("Brats21", "ATLAS_v2"):
      if test_set != label:
        assert rows["sadm", label, test_set][key] == "", (label, test_set)
      assert rows["unet", label, test_set][key] == "", (label, test_set)
    own = glob.glob(os.path.join(eval_dir, "sadm", label, "repeat0", label, "val", "*.npz"))
    names = sorted(os.path.basename(p)[:-4] for p in own)
    (cddpm_dir,) = glob.glob(os.path.join(eval_dir, "cddpm", "none", "*", label, "val"))
    everything = sorted(os.path.basename(p)[:-4] for p in glob.glob(f"{cddpm_dir}/*.npz"))
    assert 1 <= len(names) < len(everything), (names, everything)
    want, _ = thresholds.select_threshold(*_maps(cddpm_dir, names), method="exact",
                                          within_brain=True)
    assert float(rows["sadm", label, label][key]) == pytest.approx(float(want), abs=1e-12)


# ---- the training rows, re-derived by position, checked against the run's record (Q15) ----

def _row(name: str, i: int):
  from sadm_jax.data.splits import Row
  return Row(name, "Brats21_val", "Brats21", "val", i, 1, 50.0, f"/x/{name}.nii.gz",
             f"/x/{name}_mask.nii.gz", f"/x/{name}_seg.nii.gz", "/d/Brats21_val.csv")


def _table(rows, where: str = "/cache"):
  """A SliceTable of `rows` as the cache would give it: each volume's slice counts from its name."""
  from sadm_jax.data import pipeline
  voxels = [[sum(map(ord, r.name)) + k for k in range(4)] for r in rows]
  return pipeline.SliceTable(tuple(f"{where}/{r.name}" for r in rows), tuple(r.name for r in rows),
                             np.asarray(voxels, np.int64).reshape(len(rows), 4),
                             (True,) * len(rows))


def test_training_rows_are_checked_against_the_recorded_fingerprint(caplog):
  """The rows `val_rows` leaves out of τ tuning are verified against the content fingerprint the
  run recorded of its training table: the same volumes (cached elsewhere) pass and are recorded;
  a row inserted before them shifts the positions onto other volumes and is refused in one line
  naming the run, split, CSV, rows and what to do; a run that recorded nothing warns."""
  import logging

  from sadm_jax.evaluate import planning, weak_rows
  rows = [_row(f"v{i}", i) for i in range(4)]
  run = planning.EvalRun("sadm", "Brats21", "repeat0", 0, sadm_workdir="/w/sadm",
                         held_out=("Brats21", "brats", (2, 4), (0, 2)))
  other = planning.EvalRun("unet", "ATLAS_v2", "repeat0", 0, sadm_workdir="/w/atlas",
                           held_out=("ATLAS_v2", "atlas", None, None))
  csv_of = lambda split: f"/d/splits/{split}.csv"
  weak = weak_rows.trained([run, other], {run.id: rows, other.id: rows}, ["Brats21"], csv_of)
  assert [(t.run_id, t.split, t.csv, t.rows) for t in weak] == \
      [(run.id, "Brats21_val", "/d/splits/Brats21_val.csv", (2, 4))]  # ATLAS_v2 not evaluated
  assert [r.name for r in weak[0].volumes] == ["v2", "v3"]
  recorded = {"/w/sadm": {"train": _table(rows[2:], "/train/cache").content_fingerprint(),
                          "val": "x"}}
  with caplog.at_level(logging.INFO):
    out = weak_rows.verify(weak, _table, recorded)
  assert out == {run.id: {"split": "Brats21_val", "rows": [2, 4], "verified": True,
                          "fingerprint": recorded["/w/sadm"]["train"]}}
  assert "rows 2:4 of Brats21_val are the volumes SADM run /w/sadm trained on" in caplog.text
  # A row inserted at 1 (before the training rows): positions 2:4 are now v1, v2.
  shifted = rows[:1] + [_row("new", 1)] + rows[1:]
  weak = weak_rows.trained([run], {run.id: shifted}, ["Brats21"], csv_of)
  with pytest.raises(weak_rows.TrainingRowsChanged) as e:
    weak_rows.verify(weak, _table, recorded)
  message = str(e.value)
  assert isinstance(e.value, ValueError) and "\n" not in message
  assert message.startswith("SADM run /w/sadm: rows 2:4 of Brats21_val (/d/splits/Brats21_val.csv) "
                            "are not the volumes it trained on"), message
  for part in ("changed since training", "restore /d/splits/Brats21_val.csv",
               "retrain the run", "sadm.weak_train_rows", "Q15"):
    assert part in message, part
  caplog.clear()
  with caplog.at_level(logging.WARNING):
    out = weak_rows.verify(weak, _table, {"/w/sadm": None})
  assert out[run.id]["verified"] is False
  assert "SADM run /w/sadm recorded no fingerprint of its training data" in caplog.text
  assert "rows 2:4 of Brats21_val could not be verified" in caplog.text


def test_a_run_that_recorded_names_and_volumes_apart_is_checked_on_its_volumes(caplog):
  """A run that recorded its training rows' names and volumes apart (`data_identity`): its rows
  renamed in the split CSV are the same volumes, verified with a warning (the fingerprint held
  the names: refused, although τ left out exactly the training volumes); other volumes are
  refused saying whether the names changed too; a run that recorded only 'train' is checked on
  it as before (the names its cache entries kept)."""
  import logging

  from sadm_jax.data import pipeline
  from sadm_jax.evaluate import planning, weak_rows
  rows = [_row(f"v{i}", i) for i in range(4)]
  run = planning.EvalRun("sadm", "Brats21", "repeat0", 0, sadm_workdir="/w/sadm",
                         held_out=("Brats21", "brats", (2, 4), (0, 2)))
  csv_of = lambda split: f"/d/splits/{split}.csv"
  trained = _table(rows[2:], "/train/cache")
  recorded = {"/w/sadm": pipeline.data_identity(trained, _table(rows[:2]))}
  # v2 renamed to v2b in the CSV; its cache entry (and slice counts) are v2's
  renamed = rows[:2] + [_row("v2b", 2), rows[3]]
  table = lambda rs: dataclasses.replace(_table(rows[2:]), row_names=tuple(r.name for r in rs))
  weak = weak_rows.trained([run], {run.id: renamed}, ["Brats21"], csv_of)
  with caplog.at_level(logging.WARNING):
    out = weak_rows.verify(weak, table, recorded)
  assert out[run.id]["verified"] and out[run.id]["renamed"]
  assert out[run.id]["fingerprint"] == trained.volumes_fingerprint()
  assert ("rows 2:4 of Brats21_val (/d/splits/Brats21_val.csv) are the volumes SADM run /w/sadm "
          "trained on") in caplog.text and "renamed in the split CSV" in caplog.text
  caplog.clear()
  out = weak_rows.verify(weak_rows.trained([run], {run.id: rows}, ["Brats21"], csv_of), _table,
                         recorded)
  assert out[run.id]["verified"] and not out[run.id]["renamed"] and not caplog.text
  # Other volumes under the same names (the files changed), and with other names (a row inserted).
  other = lambda rs: dataclasses.replace(
      _table(rs), slice_brain_voxels=_table(rs).slice_brain_voxels + 1)
  for volumes, shifted, why in ((other, rows, "under the names it trained on): the files"),
                                (_table, rows[:1] + [_row("new", 1)] + rows[1:],
                                 "their names changed too): the split CSV (rows added")):
    weak = weak_rows.trained([run], {run.id: shifted}, ["Brats21"], csv_of)
    with pytest.raises(weak_rows.TrainingRowsChanged) as e:
      weak_rows.verify(weak, volumes, recorded)
    message = str(e.value)
    assert "\n" not in message and why in message, message
    assert message.startswith(
        "SADM run /w/sadm: rows 2:4 of Brats21_val (/d/splits/Brats21_val.csv) are not the "
        "volumes it trained on (volume fingerprint "), message
    assert "restore /d/splits/Brats21_val.csv" in message and "Q15" in message
  # An older run: the content fingerprint (names as the cache kept them) as before.
  old = {"/w/sadm": {"train": trained.content_fingerprint(), "val": "x"}}
  weak = weak_rows.trained([run], {run.id: renamed}, ["Brats21"], csv_of)
  assert "renamed" not in weak_rows.verify(weak, table, old)[run.id]


def _as_weak_run(sadm_dir: str, dest: str, record: bool = True, data: dict | None = None) -> str:
  """A copy of a SADM run as a BraTS-weakly-supervised run trained on rows 1:3 of Brats21_val (its
  saved config's sadm.mode and rows edited, and its `data` settings updated with `data`; the
  SegUnet is the same): with `record`, the content fingerprints of those rows' tables as
  `train.sadm` records them, else none (an older run)."""
  import shutil

  import ml_collections

  from sadm_jax import config as config_lib
  from sadm_jax.data import pipeline
  shutil.copytree(sadm_dir, dest)
  for path in glob.glob(os.path.join(dest, "*", "*", "meta", "metadata")):  # best/, checkpoints/
    with open(path) as f:
      meta = json.load(f)
    meta["config"]["sadm"].update(mode="brats", weak_train_rows=[1, 3], weak_val_rows=[0, 1])
    meta["config"]["data"].update(data or {})
    meta["run"].pop("data", None)
    if record:
      config = config_lib.resolve(ml_collections.ConfigDict(meta["config"]))
      meta["run"]["data"] = pipeline.data_identity(*sadm.sadm_tables(config))
    with open(path, "w") as f:
      json.dump(meta, f)
  return dest


def _weak_only(data_dir: str, sadm_dir: str):
  """The evaluation of SADM run `sadm_dir` alone on Brats21 (no healthy passes)."""
  from tests.evaluate.conftest import evaluate_tiny_config
  c = evaluate_tiny_config(data_dir, "", [sadm_dir])
  c.evaluate.methods, c.evaluate.test_sets, c.evaluate.include_ixi = ("sadm",), ("Brats21",), False
  return c


class _PassesReached(Exception):
  """Raised in place of the first pass: everything before τ tuning went through."""


def _stop_at_the_passes(monkeypatch):
  from sadm_jax.evaluate import execute

  def stop(*args, **kwargs):
    raise _PassesReached()
  monkeypatch.setattr(execute.Evaluation, "run_passes", stop)


@pytest.mark.parametrize("record", [True, False], ids=["recorded", "older_run"])
def test_a_weak_run_s_training_rows_are_verified_before_tau(tiny_data_dir, tiny_sadm_dir, tmp_path,
                                                            monkeypatch, caplog, record):
  """Evaluating a weak run on the split it trained on: its training rows 1:3 are verified against
  its recorded fingerprint before any pass (logged); a run that recorded none (trained by an
  older version) warns that they could not be verified and goes on."""
  import logging

  from sadm_jax.evaluate import run as run_lib
  weak = _as_weak_run(tiny_sadm_dir, str(tmp_path / "weak"), record)
  _stop_at_the_passes(monkeypatch)
  with caplog.at_level(logging.INFO), pytest.raises(_PassesReached):
    run_lib.run(_weak_only(tiny_data_dir, weak), str(tmp_path / "work"))
  verified = f"rows 1:3 of Brats21_val are the volumes SADM run {weak} trained on"
  unverified = f"SADM run {weak} recorded no fingerprint of its training data"
  assert (verified in caplog.text) == record and (unverified in caplog.text) != record


def test_a_weak_run_evaluated_on_an_edited_split_is_refused(tiny_data_dir, tiny_sadm_dir, tmp_path,
                                                           capsys):
  """A row inserted into Brats21_val.csv before the rows a weak run trained on (1:3) moves those
  positions onto other volumes: the evaluation refuses in one line naming the run, the split, its
  CSV and the rows, exit code 2, before any τ and with nothing of the evaluation written (it tuned
  τ on a training volume and reported 'held-out rows')."""
  from sadm_jax import main as main_lib
  weak = _as_weak_run(tiny_sadm_dir, str(tmp_path / "weak"))
  data, csv_path = _inserted_row(tiny_data_dir, str(tmp_path / "data"))
  work = str(tmp_path / "work")
  assert main_lib.run_checked(_weak_only(data, weak), work) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1, err
  assert err[0] == _refusal(weak, csv_path, err[0]), err
  assert "changed since training" in err[0] and "sadm.weak_train_rows" in err[0]
  assert not os.path.exists(os.path.join(work, "eval")) and \
      not os.path.exists(os.path.join(work, "report"))
  # The copied data's cache started empty: only the two training rows the check reads were
  # preprocessed, none of the other volumes (the refusal does not wait for them).
  cached = [json.load(open(m))["name"] for m in glob.glob(os.path.join(data, "cache", "*", "*",
                                                                        "meta.json"))]
  assert sorted(cached) == ["Brats21_val_001", "Brats21_val_new"], cached


def _inserted_row(data_dir: str, dest: str) -> tuple[str, str]:
  """(data dir, Brats21_val.csv): a copy of the fake data with a new volume (row 0's files under
  another name) inserted as row 1 of Brats21_val.csv."""
  import shutil

  from tests.evaluate.conftest import copy_data
  data = copy_data(data_dir, dest)
  base = os.path.join(data, "Data")
  for kind in ("t1", "mask", "seg"):
    shutil.copyfile(os.path.join(base, "Test", "Brats21", kind, f"Brats21_val_000_{kind}.nii.gz"),
                    os.path.join(base, "Test", "Brats21", kind, f"Brats21_val_new_{kind}.nii.gz"))
  csv_path = os.path.join(base, "splits", "Brats21_val.csv")
  with open(csv_path) as f:
    lines = f.read().splitlines()  # a header, then rows 0, 1, 2
  new = lines[1].replace("Brats21_val_000", "Brats21_val_new")
  with open(csv_path, "w") as f:
    f.write("\n".join(lines[:2] + [new] + lines[2:]) + "\n")
  return data, csv_path


def _refusal(weak: str, csv_path: str, line: str) -> str:
  """The expected error line (its fingerprints taken from `line`)."""
  import re
  found, want = re.search(r"fingerprint (\w+), recorded (\w+)", line).groups()
  assert found != want
  return (f"error: SADM run {weak}: rows 1:3 of Brats21_val ({csv_path}) are not the volumes it "
          f"trained on (volume fingerprint {found}, recorded {want}; their names changed too): "
          "the split CSV (rows added, removed or re-ordered; with default row ranges, rows added "
          "at its end too) or its cleaning (data.clean_splits, data.skip_invalid) changed since "
          "training, and τ would be tuned on training volumes (Q15); restore "
          f"{csv_path} as it was when the run trained, or "
          "retrain the run on the split as it is now (--config.sadm.weak_train_rows=(start, stop) "
          "sets its rows)")


def test_two_processes_refuse_an_edited_split_alike(tiny_data_dir, tiny_sadm_dir, tmp_path):
  """2 processes on loopback, each preprocessing half of the copied data's volumes: both read the
  weak run's training rows once every share is cached, and both stop with the same one line
  (exit code 2), nothing of the evaluation written."""
  from tests import loopback
  weak = _as_weak_run(tiny_sadm_dir, str(tmp_path / "weak"))
  data, csv_path = _inserted_row(tiny_data_dir, str(tmp_path / "data"))
  work = str(tmp_path / "two" / "work")
  env = {**os.environ, "JAX_PLATFORMS": "cpu",
         "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
  results = loopback.run_main(
      ["--config=configs/evaluate.py:tiny", f"--workdir={work}", f"--config.data.data_dir={data}",
       f"--config.data.cache_dir={os.path.join(data, 'cache')}",
       "--config.evaluate.methods=('sadm',)", f"--config.evaluate.sadm_workdirs=('{weak}',)",
       "--config.evaluate.test_sets=('Brats21',)", "--config.evaluate.include_ixi=False"],
      2, os.path.dirname(work), env, 180.0, ok_codes=(0, 2))
  lines = []
  for code, _, err in results:
    assert code == 2, err[-3000:]
    (line,) = [x for x in err.splitlines() if x.startswith("error: ")]
    assert line == _refusal(weak, csv_path, line), line
    lines.append(line)
  assert lines[0] == lines[1]
  assert not os.path.exists(os.path.join(work, "eval")) and \
      not os.path.exists(os.path.join(work, "report"))


def _bad_row_in_val_and_test(data_dir: str, dest: str) -> str:
  """A copy of the fake data with an invalid volume (its image file is not NIfTI) inserted as row
  0 of Brats21_val.csv and added to Brats21_test.csv too; returns the data dir."""
  import shutil

  from tests.evaluate.conftest import copy_data, edit_split
  data = copy_data(data_dir, dest)
  base = os.path.join(data, "Data", "Test", "Brats21")
  for kind in ("mask", "seg"):
    shutil.copyfile(os.path.join(base, kind, f"Brats21_val_000_{kind}.nii.gz"),
                    os.path.join(base, kind, f"Brats21_val_bad_{kind}.nii.gz"))
  with open(os.path.join(base, "t1", "Brats21_val_bad_t1.nii.gz"), "wb") as f:
    f.write(b"not a NIfTI file")
  bad = lambda text: text.splitlines()[1].replace("Brats21_val_000", "Brats21_val_bad")
  val = edit_split(data, "Brats21_val.csv", lambda t: "\n".join(
      t.splitlines()[:1] + [bad(t)] + t.splitlines()[1:]) + "\n")
  with open(val) as f:
    row = bad(f.read().replace("Brats21_val_bad", "Brats21_val_000"))
  edit_split(data, "Brats21_test.csv", lambda t: t.rstrip("\n") + "\n" + row + "\n")
  return data


@pytest.mark.parametrize("trained_clean", [False, True],
                         ids=["trained_uncleaned", "trained_cleaned"])
def test_an_invalid_row_skipped_in_another_split_keeps_the_training_rows(
    tiny_data_dir, tiny_sadm_dir, tmp_path, monkeypatch, caplog, trained_clean):
  """An invalid volume in Brats21_val and Brats21_test, skipped (data.skip_invalid) by a weak run
  that trained without cleaning (its val: bad, 000, 001, 002 → trains on 001, 002) and by an
  evaluation that cleans (its val loses the row to test, where it is skipped) — or the reverse.
  The evaluation re-derived the run's rows skipping only the rows IT skipped in Brats21_val, so
  rows 1:3 were 000, 001 and the unchanged run was refused (TrainingRowsChanged); the run's rows
  are now re-derived skipping invalid files by their identity, in whatever split: verified."""
  import logging

  from sadm_jax.evaluate import run as run_lib
  data = _bad_row_in_val_and_test(tiny_data_dir, str(tmp_path / "data"))
  weak = _as_weak_run(tiny_sadm_dir, str(tmp_path / "weak"), data={
      "data_dir": data, "cache_dir": os.path.join(data, "cache"), "clean_splits": trained_clean,
      "skip_invalid": True})
  c = _weak_only(data, weak)
  c.data.clean_splits, c.data.skip_invalid = not trained_clean, True
  _stop_at_the_passes(monkeypatch)
  with caplog.at_level(logging.INFO), pytest.raises(_PassesReached):
    run_lib.run(c, str(tmp_path / "work"))
  assert f"rows 1:3 of Brats21_val are the volumes SADM run {weak} trained on" in caplog.text


def test_a_training_row_renamed_in_the_csv_is_seen_and_not_refused(tiny_data_dir, tiny_sadm_dir,
                                                                    tmp_path, monkeypatch, caplog):
  """A weak run's training row renamed in Brats21_val.csv, nothing else changed. The check's
  fingerprint held the names its cache entries kept: with that cache the rename went unseen, and
  with a fresh cache the unchanged volumes were refused (TrainingRowsChanged). The run now
  records its rows' names and volumes apart: both caches verify the volumes and warn of the
  rename."""
  import logging

  from sadm_jax.evaluate import run as run_lib
  from tests.evaluate.conftest import copy_data, edit_split
  data = copy_data(tiny_data_dir, str(tmp_path / "data"))
  weak = _as_weak_run(tiny_sadm_dir, str(tmp_path / "weak"), data={
      "data_dir": data, "cache_dir": os.path.join(data, "cache")})
  edit_split(data, "Brats21_val.csv",
             lambda t: t.replace(",Brats21_val_001,", ",Brats21_val_001_renamed,"))
  _stop_at_the_passes(monkeypatch)
  for cache in ("cache", "fresh_cache"):
    c = _weak_only(data, weak)
    c.data.cache_dir = os.path.join(data, cache)
    caplog.clear()
    with caplog.at_level(logging.INFO), pytest.raises(_PassesReached):
      run_lib.run(c, str(tmp_path / cache / "work"))
    assert (f"rows 1:3 of Brats21_val ({data}/Data/splits/Brats21_val.csv) are the volumes SADM "
            f"run {weak} trained on") in caplog.text, cache
    assert "under other names: renamed in the split CSV since training" in caplog.text, cache
