"""A weak run's training rows, re-derived by position, checked against what it recorded (Q15)."""

from __future__ import annotations

import dataclasses
import logging
from typing import Callable, Sequence

from sadm_jax.data import pipeline
from sadm_jax.data.splits import Row
from sadm_jax.evaluate.planning import EvalRun, training_rows
from sadm_jax.train.checkpoint import RunError


class TrainingRowsChanged(RunError):
  """The rows an evaluation leaves out of a weak run's τ tuning are not those it trained on."""


@dataclasses.dataclass(frozen=True)
class Trained:
  """The rows of <set>_val a weakly supervised run's SegUnet trained on, as the evaluation finds
  them: run id, SADM workdir, split name ('Brats21_val'), its CSV, the (start, stop) positions
  and the rows there."""
  run_id: str
  workdir: str
  split: str
  csv: str
  rows: tuple[int, int]
  volumes: tuple[Row, ...]


def trained(runs: Sequence[EvalRun], stage2: dict, sets: Sequence[str],
            csv_of: Callable[[str], str] = str) -> list[Trained]:
  """The training rows of each weakly supervised run whose own <set>_val is evaluated (the rows
  `planning.val_rows` leaves out). stage2: `planning.stage2_val_rows`; csv_of: split -> CSV."""
  out = []
  for r in runs:
    if r.held_out and r.held_out[0] in sets and r.id in stage2:
      (start, stop), volumes = training_rows(r, stage2[r.id])
      split = f"{r.held_out[0]}_val"
      out.append(Trained(r.id, r.sadm_workdir, split, csv_of(split), (start, stop),
                         tuple(volumes)))
  return out


def verify(runs: Sequence[Trained], table: Callable[[Sequence[Row]], pipeline.SliceTable],
           recorded: dict) -> dict[str, dict]:
  """Compares each run's re-derived training rows (`table(rows)`, e.g. `SliceTable.from_rows` on
  the evaluation's cache) with what the run recorded of its training table when it trained
  (`meta['run']['data']`, `pipeline.data_identity`). Deterministic: every process finds the same.

  A run that recorded its rows' names and volumes apart ('train_names', 'train_volumes') is
  checked on its volumes: other volumes are refused, saying whether the names changed too; the
  same volumes renamed in the CSV pass with a warning. An older run is checked on its
  `content_fingerprint` ('train': names as its cache entries kept them, and volumes).

  recorded: SADM workdir -> its recorded `pipeline.data_identity`, None for a run trained before
  it was recorded (one warning: not verified). Returns run id -> {'split', 'rows', 'fingerprint',
  'verified'} (and 'renamed' where names were recorded). Raises TrainingRowsChanged (one line)
  when they differ: τ would be tuned on training volumes.
  """
  out = {}
  for t in runs:
    data = recorded.get(t.workdir) or {}
    where = f"rows {t.rows[0]}:{t.rows[1]} of {t.split}"
    found_table = table(t.volumes)
    if data.get("train_volumes") is not None:
      out[t.run_id] = _verify_volumes(t, found_table, data, where)
      continue
    found, want = found_table.content_fingerprint(), data.get("train")
    if want is None:
      logging.warning("SADM run %s recorded no fingerprint of its training data (trained by an "
                      "older version): %s could not be verified as the volumes it trained on; τ "
                      "is tuned on the other rows of %s as it is now (Q15)", t.workdir, where,
                      t.csv)
    elif found != want:
      raise TrainingRowsChanged(
          f"SADM run {t.workdir}: {where} ({t.csv}) are not the volumes it trained on (content "
          f"fingerprint {found}, recorded {want}): the split CSV (rows added, removed or "
          "re-ordered; with default row ranges, rows added at its end too) or its cleaning "
          f"{_WHAT_TO_DO.format(csv=t.csv)}")
    else:
      logging.info("%s: %s are the volumes SADM run %s trained on (fingerprint %s)", t.run_id,
                   where, t.workdir, found)
    out[t.run_id] = {"split": t.split, "rows": list(t.rows), "fingerprint": found,
                     "verified": want is not None}
  return out


_WHAT_TO_DO = (
    "(data.clean_splits, data.skip_invalid) changed since training, and τ would be tuned on "
    "training volumes (Q15); restore {csv} as it was when the run trained, or retrain the run on "
    "the split as it is now (--config.sadm.weak_train_rows=(start, stop) sets its rows)")


def _verify_volumes(t: Trained, found_table: pipeline.SliceTable, data: dict, where: str) -> dict:
  """`verify` of a run that recorded its training rows' names and volumes apart."""
  found, want = found_table.volumes_fingerprint(), data["train_volumes"]
  renamed = found_table.names_fingerprint() != data.get("train_names")
  if found != want:
    why = ("their names changed too): the split CSV (rows added, removed or re-ordered; with "
           "default row ranges, rows added at its end too)" if renamed else
           "under the names it trained on): the files these rows name (or the paths the split CSV "
           "gives them)")
    raise TrainingRowsChanged(
        f"SADM run {t.workdir}: {where} ({t.csv}) are not the volumes it trained on (volume "
        f"fingerprint {found}, recorded {want}; {why} or its cleaning "
        f"{_WHAT_TO_DO.format(csv=t.csv)}")
  if renamed:
    logging.warning("%s: %s (%s) are the volumes SADM run %s trained on (volume fingerprint %s) "
                    "under other names: renamed in the split CSV since training", t.run_id, where,
                    t.csv, t.workdir, found)
  else:
    logging.info("%s: %s are the volumes SADM run %s trained on (fingerprint %s)", t.run_id,
                 where, t.workdir, found)
  return {"split": t.split, "rows": list(t.rows), "fingerprint": found, "verified": True,
          "renamed": renamed}
