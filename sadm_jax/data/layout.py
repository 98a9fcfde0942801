"""DATA_DIR layout of the authors' preprocessed data: where splits live and how CSV paths resolve."""

from __future__ import annotations

import dataclasses
import os
import re

from sadm_jax.data.errors import DataError

DATASETS = ("IXI", "Brats21", "ATLAS_v2", "MSLUB", "WMH")
PATHOLOGICAL = ("Brats21", "ATLAS_v2", "MSLUB", "WMH")
NUM_FOLDS = 5
SPLIT_NAMES = (tuple(f"IXI_train_fold{k}" for k in range(NUM_FOLDS)) +
               tuple(f"IXI_val_fold{k}" for k in range(NUM_FOLDS)) + ("IXI_test",) +
               tuple(f"{d}_{s}" for d in PATHOLOGICAL for s in ("val", "test")))

# The authors' directory of each data set under `<DATA_DIR>/Data`, and the files of one volume.
SUBDIRS = {"IXI": "Train/ixi", "Brats21": "Test/Brats21", "ATLAS_v2": "Test/ATLAS_v2",
           "MSLUB": "Test/MSLUB", "WMH": "Test/WMH"}
VOLUME_KINDS = ("t1", "mask", "seg")


def volume_paths(dataset: str, name: str) -> dict[str, str]:
  """CSV paths (leading `/`, relative to the base) of volume `name`'s files in the authors' layout:
  `{kind: /<SUBDIRS[dataset]>/<kind>/<name>_<kind>.nii.gz}` for t1, mask and (not IXI) seg."""
  kinds = VOLUME_KINDS[:2] if dataset == "IXI" else VOLUME_KINDS
  return {k: f"/{SUBDIRS[dataset]}/{k}/{name}_{k}.nii.gz" for k in kinds}


_SPLIT_RE = re.compile(r"^(?P<dataset>IXI|Brats21|ATLAS_v2|MSLUB|WMH)_(?P<type>train|val|test)"
                       r"(?:_fold(?P<fold>\d+))?$")


@dataclasses.dataclass(frozen=True)
class SplitName:
  """A parsed split name such as `IXI_train_fold3` or `Brats21_test`."""
  name: str
  dataset: str  # one of DATASETS
  split_type: str  # 'train' | 'val' | 'test'
  fold: int | None


def parse_split_name(name: str) -> SplitName:
  """Parses `<dataset>_<train|val|test>[_fold<k>]`; raises ValueError for anything else."""
  m = _SPLIT_RE.match(name)
  if not m:
    raise ValueError(f"unknown split name {name!r}; expected one of {', '.join(SPLIT_NAMES)}")
  fold = m.group("fold")
  return SplitName(name, m.group("dataset"), m.group("type"), None if fold is None else int(fold))


@dataclasses.dataclass(frozen=True)
class DataRoot:
  """A resolved DATA_DIR.

  Attributes:
    data_dir: the directory the user gave.
    base: the directory CSV paths are relative to (`data_dir/Data` or `data_dir`).
    layout: 'authors' when the extra `Data/` level was found (what the reference code
      expects), 'flat' when `splits/` sits directly under `data_dir` (the reference README).
  """
  data_dir: str
  base: str
  layout: str

  @property
  def splits_dir(self) -> str:
    return os.path.join(self.base, "splits")

  def split_csv(self, name: str) -> str:
    return os.path.join(self.splits_dir, f"{name}.csv")

  def available_splits(self) -> list[str]:
    """Known split names whose CSV exists, in canonical order."""
    return [n for n in SPLIT_NAMES if os.path.isfile(self.split_csv(n))]

  def unknown_split_files(self) -> list[str]:
    """CSV files in the split directory whose name is not a known split (e.g. a typo)."""
    known = {f"{n}.csv" for n in SPLIT_NAMES}
    return sorted(f for f in os.listdir(self.splits_dir)
                  if f.lower().endswith(".csv") and f not in known)

  def describe(self) -> str:
    if self.layout == "authors":
      return f"{self.data_dir}: authors' layout with the extra Data/ level (splits in {self.splits_dir})"
    return f"{self.data_dir}: flat layout (splits in {self.splits_dir})"


def authors_root(data_dir: str) -> DataRoot:
  """The DataRoot to *write* a cohort to in the authors' layout (`<data_dir>/Data/...`)."""
  data_dir = os.path.abspath(os.path.expanduser(os.fspath(data_dir)))
  return DataRoot(data_dir, os.path.join(data_dir, "Data"), "authors")


def resolve_data_root(data_dir: str) -> DataRoot:
  """Finds the split directory under `data_dir`, accepting both `Data/splits` and `splits`."""
  if not data_dir:
    raise DataError("data.data_dir is empty: set --config.data.data_dir=<DATA_DIR>")
  data_dir = os.path.abspath(os.path.expanduser(data_dir))
  if not os.path.isdir(data_dir):
    raise DataError(f"{data_dir}: DATA_DIR does not exist or is not a directory")
  if os.path.isdir(os.path.join(data_dir, "Data", "splits")):
    return DataRoot(data_dir, os.path.join(data_dir, "Data"), "authors")
  if os.path.isdir(os.path.join(data_dir, "splits")):
    return DataRoot(data_dir, data_dir, "flat")
  up = next((os.path.dirname(d) for d in (data_dir, os.path.dirname(data_dir))
             if os.path.basename(d) in ("splits", "Train", "Test", "Data")
             and os.path.isdir(os.path.join(os.path.dirname(d), "splits"))), None)
  hint = f"; DATA_DIR is the folder holding splits/: {up}" if up else ""
  raise DataError(f"{data_dir}: no split directory found (looked for {data_dir}/Data/splits "
                  f"and {data_dir}/splits){hint}")


# Cells pandas.read_csv reads as missing (its default na_values; the reference reads the split
# CSVs with pandas), plus any case of 'nan'. R's write.csv writes NA.
MISSING_CELLS = frozenset({"", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan",
                           "1.#IND", "1.#QNAN", "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a",
                           "nan", "null"})


def is_missing(cell: str | None) -> bool:
  """Whether a CSV cell is empty or a missing-value marker (see MISSING_CELLS)."""
  cell = (cell or "").strip()
  return cell in MISSING_CELLS or cell.lower() == "nan"


def resolve_csv_path(base: str, csv_path: str, source: str = "") -> str | None:
  """Resolves a CSV path ('/Train/ixi/...' = relative to `base`); None for an empty or missing
  (`is_missing`) cell.

  Backslashes count as separators (CSVs written on Windows). A path that does not exist relative
  to `base` but does as written, as an absolute path inside `base`, is taken as written.

  Raises DataError for a path that leaves `base` (e.g. '/../../etc/passwd'), and for an absolute
  path outside `base` that exists as written (CSV paths are relative to `base`).
  """
  csv_path = (csv_path or "").strip()
  if is_missing(csv_path):
    return None
  where = f"{source}: " if source else ""
  posix = csv_path.replace("\\", "/")
  full = os.path.normpath(os.path.join(base, posix.lstrip("/")))
  base_norm = os.path.normpath(base)
  if os.path.commonpath([full, base_norm]) != base_norm:
    raise DataError(f"{where}path {csv_path!r} leaves DATA_DIR ({base_norm}); refusing to read it")
  if os.path.isabs(posix) and not os.path.exists(full) and os.path.exists(posix):
    literal = os.path.normpath(posix)
    if _inside(literal, base_norm):
      return literal
    raise DataError(f"{where}path {csv_path!r} is an absolute path outside DATA_DIR "
                    f"({base_norm}); CSV paths are relative to that directory (e.g. "
                    "'/Train/ixi/t1/<name>_t1.nii.gz')")
  return full


def _inside(path: str, base: str) -> bool:
  """Whether `path` lies under `base`, also after resolving symbolic links."""
  return any(os.path.commonpath([p, b]) == b
             for p, b in ((path, base), (os.path.realpath(path), os.path.realpath(base))))


_MODALITY_TOKEN = re.compile(r"(?<=[_\-.])(t1|t2|flair|T1|T2|FLAIR)(?=[_\-.])")


def with_modality(path: str, modality: str) -> str:
  """Replaces the modality token in the FILE NAME only (METHOD Q19), e.g. `x_t1.nii.gz` → `x_t2.nii.gz`.

  Other directory components (which may contain 't1' for other reasons) are never touched; the
  file's own directory is switched too when its name is exactly a modality (`.../t1/`), since the
  authors' layout stores each modality in its own folder.
  """
  directory, name = os.path.split(path)
  stem_match = list(_MODALITY_TOKEN.finditer(name))
  if stem_match:
    m = stem_match[-1]
    name = name[:m.start()] + modality + name[m.end():]
  parent, leaf = os.path.split(directory)
  if leaf.lower() in ("t1", "t2", "flair"):
    directory = os.path.join(parent, modality)
  return os.path.join(directory, name)
