"""An evaluation's passes (one split evaluated by some runs) and the checks on their volumes."""

from __future__ import annotations

import dataclasses
from typing import Sequence

from sadm_jax.data import prepare
from sadm_jax.data.splits import Row
from sadm_jax.evaluate.planning import DRAEM_SET, EvalRun, val_rows
from sadm_jax.evaluate.store import safe


@dataclasses.dataclass(frozen=True)
class Pass:
  """One split evaluated by some runs.

  set_name: data set ('IXI' for the healthy passes); split: 'val' | 'test'; kind: 'val' | 'test'
  (pathological or DRAEM) | 'healthy_val' | 'healthy_test'; rows: run id -> its rows, in order;
  how: run id -> which val rows tune τ ('all' or held-out, Q15).
  """
  set_name: str
  split: str
  kind: str
  rows: dict
  how: dict = dataclasses.field(default_factory=dict)

  @property
  def keep_map(self) -> bool:
    """Val passes keep each map (with labels and mask) for the pooled threshold search."""
    return self.kind in ("val", "healthy_val")

  def volume_name(self, row: Row) -> str:
    """The name of a row's volume in this pass (DRAEM volumes are IXI volumes with anomalies)."""
    return f"{row.name}_draem" if self.set_name == DRAEM_SET else row.name


def val_passes(runs: Sequence[EvalRun], splits: dict, sets: Sequence[str], ixi: bool,
               stage2: dict | None = None) -> list[Pass]:
  """IXI val (voxel-FPR thresholds) and <set>_val of every data set (τ): no pass needs another.

  stage2: `stage2_val_rows` (weakly supervised runs' training rows are found there)."""
  out = []
  if ixi:
    out.append(Pass("IXI", "val", "healthy_val",
                    {r.id: splits[f"IXI_val_fold{r.data_fold}"] for r in runs}))
  for s in sets:
    if s == DRAEM_SET:
      chosen = {r.id: (splits[f"IXI_val_fold{r.data_fold}"], "all") for r in runs}
    else:
      chosen = {r.id: val_rows(r, s, splits[f"{s}_val"], (stage2 or {}).get(r.id)) for r in runs}
    out.append(Pass(s, "val", "val", {k: v[0] for k, v in chosen.items()},
                    {k: v[1] for k, v in chosen.items()}))
  return out


def test_passes(runs: Sequence[EvalRun], splits: dict, sets: Sequence[str], ixi: bool
                ) -> list[Pass]:
  """IXI test (healthy scores and FPRs) and <set>_test of every data set (metrics at τ)."""
  out = [Pass("IXI", "test", "healthy_test", {r.id: splits["IXI_test"] for r in runs})] \
      if ixi else []
  for s in sets:
    rows = splits["IXI_test"] if s == DRAEM_SET else splits[f"{s}_test"]
    out.append(Pass(s, "test", "test", {r.id: rows for r in runs}))
  return out


def check_volume_names(passes: Sequence[Pass]) -> None:
  """Raises ValueError when two volumes of one split would share a result file (`Store.paths`):
  the same stored name (`safe(volume_name)`, compared without case: macOS and Windows file
  systems do) for different images. One would overwrite the other's result and be counted
  twice, which one depending on the process and batch order."""
  for p in passes:
    seen: dict[str, Row] = {}
    for row in {(r.img, r.name): r for rows in p.rows.values() for r in rows}.values():
      other = seen.setdefault(safe(p.volume_name(row)).casefold(), row)
      if (other.img, other.name) != (row.img, row.name):
        raise ValueError(f"{row.csv}: volumes {other.name!r} ({other.img}) and {row.name!r} "
                         f"({row.img}) of {row.split} would share one result file "
                         f"({safe(p.volume_name(row))}.json): give them distinct img_name values "
                         "(letters, digits and ._+- are kept, anything else becomes _)")


def check_splits(root, splits: dict, hygiene, skipped: dict) -> None:
  """Raises ValueError naming the CSV of a needed split that has no volume left (every row
  shared with a split of higher priority, or invalid and skipped): nothing to tune τ on or test.

  root: `layout.DataRoot`; hygiene: `splits.HygieneReport`; skipped: split -> invalid rows skipped.
  """
  for name, rows in splits.items():
    if not rows:
      raise ValueError(f"{root.split_csv(name)}: no volume left to evaluate: "
                       f"{prepare.why_empty(name, hygiene, skipped)}")
