"""Split CSVs in the authors' format: reading, duplicate removal and train/val/test overlap hygiene."""

from __future__ import annotations

import collections
import csv
import dataclasses
import io as pyio
import os
from typing import Any, Sequence

from sadm_jax.data import layout
from sadm_jax.data.errors import DataError
from sadm_jax.utils import io

REQUIRED_COLUMNS = ("img_name", "label", "age", "img_path", "mask_path", "seg_path")
# Data-set-specific columns of the authors' CSVs, between `img_name` and `label`.
META_COLUMNS = {"IXI": ("sex", "site"), "Brats21": ("grade",),
                "ATLAS_v2": ("site", "lesion_volume_ml"), "MSLUB": ("scanner",),
                "WMH": ("scanner",)}


def csv_header(dataset: str) -> list[str]:
  """The split-CSV header of `dataset`: empty index name, img_name, metadata, label, age, paths."""
  return ["", "img_name", *META_COLUMNS[dataset], "label", "age", "img_path", "mask_path",
          "seg_path"]


def write_split(root: layout.DataRoot, split: str, rows: Sequence[dict[str, Any]]) -> str:
  """Atomically writes `<root>/splits/<split>.csv` in the authors' format; returns its path.

  Each row maps every column of `csv_header` (but the index, which is the row position) to its
  value; `seg_path` may be empty (healthy volumes).
  """
  dataset = layout.parse_split_name(split).dataset
  header = csv_header(dataset)
  buf = pyio.StringIO()
  writer = csv.writer(buf, lineterminator="\n")
  writer.writerow(header)
  for i, row in enumerate(rows):
    writer.writerow([i] + [row[c] for c in header[1:]])
  path = root.split_csv(split)
  io.write_text(path, buf.getvalue())
  return path


@dataclasses.dataclass(frozen=True)
class Row:
  """One volume of a split, with absolute paths.

  Attributes:
    name: `img_name` of the CSV (the subject/volume id).
    split: split name, e.g. 'IXI_train_fold0'.
    dataset: 'IXI' | 'Brats21' | 'ATLAS_v2' | 'MSLUB' | 'WMH'.
    split_type: 'train' | 'val' | 'test'.
    index: the CSV's leading index column (the row position when it has none).
    label: 0 healthy, 1 pathological.
    age: the `age` column as float (NaN when empty).
    img, mask: absolute paths; seg: absolute path or None (healthy IXI).
    csv: the CSV the row came from (for error messages).
  """
  name: str
  split: str
  dataset: str
  split_type: str
  index: int
  label: int
  age: float
  img: str
  mask: str
  seg: str | None
  csv: str


def read_split(root: layout.DataRoot, split: str, modality: str = "t1") -> list[Row]:
  """Reads `<root>/splits/<split>.csv`; raises DataError naming the file on any format problem."""
  info = layout.parse_split_name(split)
  path = root.split_csv(split)
  if not os.path.isfile(path):
    raise DataError(f"{path}: split file not found (split {split!r}, {root.describe()})")
  # utf-8-sig: Excel's "CSV UTF-8" starts with a byte-order mark, which would glue itself to the
  # first header cell (the index column or `img_name`).
  try:
    with open(path, newline="", encoding="utf-8-sig") as f:
      table = list(csv.reader(f))
  except UnicodeDecodeError as e:
    raise DataError(f"{path}: not UTF-8 text (byte {e.start}: {e.reason}); save it as "
                    "'CSV UTF-8'") from None
  if not table:
    raise DataError(f"{path}: empty CSV (no header)")
  header, body = [h.strip() for h in table[0]], table[1:]
  missing = [c for c in REQUIRED_COLUMNS if c not in header]
  if missing:
    hint = ("; the file is separated by ';', expected ','" if len(header) == 1 and ";" in header[0]
            else "")
    raise DataError(f"{path}: missing required column(s) {', '.join(missing)} "
                    f"(found: {', '.join(h or '<index>' for h in header)}){hint}")
  twice = [c for c in REQUIRED_COLUMNS if header.count(c) > 1]
  if twice:  # which one was read would be the last, without a word
    raise DataError(f"{path}: column(s) {', '.join(twice)} appear more than once in the header")
  col = {h: i for i, h in enumerate(header)}
  has_index = header[0] == ""
  rows = []
  named: dict[str, tuple[int, str]] = {}  # img_name → (first line, its image)
  for line_no, values in enumerate(body, start=2):
    if not any(v.strip() for v in values):
      continue
    if len(values) != len(header):
      raise DataError(f"{path}: line {line_no} has {len(values)} fields, header has {len(header)}")
    where = f"{path}: line {line_no}"
    try:
      index = int(values[0]) if has_index else line_no - 2
      label = int(float(values[col["label"]]))
      age_s = values[col["age"]].strip()
      age = float("nan") if layout.is_missing(age_s) else float(age_s)
    except ValueError as e:
      raise DataError(f"{where}: bad index/label/age value ({e})") from None
    img = layout.resolve_csv_path(root.base, values[col["img_path"]], where)
    mask = layout.resolve_csv_path(root.base, values[col["mask_path"]], where)
    seg = layout.resolve_csv_path(root.base, values[col["seg_path"]], where)
    if img is None or mask is None:
      raise DataError(f"{where}: img_path and mask_path must not be empty")
    if info.dataset != "IXI" and seg is None:
      raise DataError(f"{where}: seg_path is empty for pathological data set {info.dataset}")
    name = values[col["img_name"]].strip()
    if not name:
      raise DataError(f"{where}: img_name is empty")
    first, first_img = named.setdefault(name, (line_no, img))
    if first_img != img:  # evaluation stores each volume's results under its name
      raise DataError(f"{where}: img_name {name!r} also names another image on line {first} "
                      f"({first_img}); give every image of a split its own name")
    rows.append(Row(name=name, split=split, dataset=info.dataset,
                    split_type=info.split_type, index=index, label=label, age=age,
                    img=layout.with_modality(img, modality), mask=mask, seg=seg, csv=path))
  if not rows:
    raise DataError(f"{path}: split has no rows")
  return rows


@dataclasses.dataclass
class HygieneReport:
  """What de-duplication and overlap removal did, per split (counts and the affected names)."""
  duplicates: dict[str, list[str]] = dataclasses.field(default_factory=dict)
  overlaps: dict[str, dict[str, list[str]]] = dataclasses.field(default_factory=dict)
  dropped: dict[str, int] = dataclasses.field(default_factory=dict)
  applied: bool = True

  def summary(self, split: str) -> dict:
    return {
        "duplicate_rows": len(self.duplicates.get(split, [])),
        "overlaps": {k: len(v) for k, v in self.overlaps.get(split, {}).items()},
        "dropped": self.dropped.get(split, 0) if self.applied else 0,
    }


# A split loses images it shares with a split of higher priority (METHOD Q17): test > val > train.
_PRIORITY = {"test": 2, "val": 1, "train": 0}


def _partners(split: str, names: Sequence[str]) -> list[str]:
  """Splits that must be disjoint from `split`: same data set, same fold (or no fold), other type."""
  info = layout.parse_split_name(split)
  out = []
  for other in names:
    o = layout.parse_split_name(other)
    if other == split or o.dataset != info.dataset or o.split_type == info.split_type:
      continue
    if info.fold is not None and o.fold is not None and info.fold != o.fold:
      continue
    out.append(other)
  return out


def clean_splits(splits: dict[str, list[Row]], apply: bool = True
                 ) -> tuple[dict[str, list[Row]], HygieneReport]:
  """Reports duplicate rows and train/val/test overlaps (by image path); removes them if `apply`.

  Duplicates keep their first occurrence. An image in two splits of the same data set and fold
  is kept in the split of higher priority (test > val > train) and dropped from the other.
  With `apply=False` (faithful mode) everything is reported and nothing is changed.
  """
  report = HygieneReport(applied=apply)
  deduped = {}
  for split, rows in splits.items():
    seen, keep, dups = set(), [], []
    for r in rows:
      if r.img in seen:
        dups.append(r.name)
        continue
      seen.add(r.img)
      keep.append(r)
    report.duplicates[split] = dups
    deduped[split] = keep
  images = {s: {r.img for r in rows} for s, rows in deduped.items()}
  out = {}
  for split, rows in deduped.items():
    prio = _PRIORITY[layout.parse_split_name(split).split_type]
    overlaps, drop = collections.defaultdict(list), set()
    for other in _partners(split, list(deduped)):
      shared = images[split] & images[other]
      if shared:
        overlaps[other] = sorted(os.path.basename(p) for p in shared)
        if _PRIORITY[layout.parse_split_name(other).split_type] > prio:
          drop |= shared
    report.overlaps[split] = dict(overlaps)
    final = rows if not apply else [r for r in rows if r.img not in drop]
    report.dropped[split] = len(splits[split]) - len(final)
    out[split] = final if apply else list(splits[split])
  return out, report


def load_splits(root: layout.DataRoot, names: Sequence[str] | None = None, modality: str = "t1",
                clean: bool = True) -> tuple[dict[str, list[Row]], HygieneReport]:
  """Reads the named splits (default: every known split present) and applies `clean_splits`,
  with `clean` also against the higher-priority splits on disk that were not named."""
  names = list(names) if names is not None else root.available_splits()
  if not names:
    raise DataError(f"{root.splits_dir}: no known split CSVs found (expected e.g. "
                    f"IXI_train_fold0.csv, Brats21_test.csv)")
  splits = {n: read_split(root, n, modality) for n in names}
  if not clean:
    return clean_splits(splits, apply=False)
  # Disjointness holds against every partner split on disk, not only the requested ones: a stage
  # that loads IXI_train/val_fold{k} (or Brats21_val alone) must still lose the images of the
  # data set's test split, as when prepare or evaluation load them all. The higher-priority
  # partners are read for this only (not validated, not returned).
  rank = lambda n: _PRIORITY[layout.parse_split_name(n).split_type]
  partners = {o: read_split(root, o, modality) for o in root.available_splits()
              if o not in splits and any(_partners(o, [n]) and rank(o) > rank(n) for n in names)}
  out, report = clean_splits({**splits, **partners}, apply=True)
  for table in (report.duplicates, report.overlaps, report.dropped):
    for o in partners:
      table.pop(o, None)
  return {n: out[n] for n in names}, report
