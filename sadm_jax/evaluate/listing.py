"""Predict's inputs listed (a file, a list, a folder, a glob pattern, a CSV): scans with unique names and their masks."""

from __future__ import annotations

import collections
import csv
import dataclasses
import glob
import os
import re

OUTPUT_SUFFIXES = ("_anomaly_map", "_anomaly_mask")  # predict's outputs: <name><suffix>.nii.gz
WALK_LIMIT = 20_000  # entries a folder's subfolders are searched through for the error's example
# The most bytes a scan's name may have: its map `<name>_anomaly_map.nii.gz` is written through two
# temporary names of 21 bytes more each (`.<file>.<8 random>.tmp.nii.gz`), within 255 bytes
NAME_BYTES = 255 - len("_anomaly_map.nii.gz") - 2 * len("..12345678.tmp.nii.gz")


def scan_stem(path: str) -> str:
  """The file name without .nii/.nii.gz (any case)."""
  return re.sub(r"\.nii(\.gz)?$", "", os.path.basename(path), flags=re.IGNORECASE)


@dataclasses.dataclass(frozen=True)
class Scan:
  """One scan to predict: name (names its outputs: the file's stem, prefixed with the folders
  that tell it from other listed scans of the same file name, `unique_names`), image path, mask
  path or None."""
  name: str
  image: str
  mask: str | None


def _is_nifti(path: str) -> bool:
  return bool(re.search(r"\.nii(\.gz)?$", path, flags=re.IGNORECASE))


def _mask_bases(stem: str) -> list[str]:
  """The names a scan's mask may start with: its stem, then `<base>` for a stem
  `<base>_<modality>` (`sub-01_T1w`), not for one ending in a number (`patient_001`: a stray
  `patient_mask` is not every patient's mask)."""
  head, _, tail = stem.rpartition("_")
  return [stem] + ([head] if head and not tail.isdigit() else [])


def _niftis(folder: str, index: dict | None) -> dict[str, list[str]]:
  """{stem: the NIfTI names in `folder` with that stem, sorted}, from `index` (one listing per
  folder for a whole input: a folder of N scans was listed N times, minutes for thousands)."""
  if index is not None and folder in index:
    return index[folder]
  found: dict[str, list[str]] = collections.defaultdict(list)
  for n in sorted(os.listdir(folder)):
    if _is_nifti(n):
      found[scan_stem(n)].append(n)
  if index is not None:
    index[folder] = found
  return found


def find_mask(stem: str, folder: str, suffix: str = "_mask", index: dict | None = None
              ) -> str | None:
  """The brain mask of scan `stem` in `folder`, None when there is none.

  `<stem><suffix>.nii[.gz]`, else (for a stem `<base>_<modality>`, e.g. `sub-01_T1w`)
  `<base><suffix>.nii[.gz]`; the extension in any case (`.NII.GZ`), the exact one first.
  `index`: a dict shared by the calls for one input, holding each folder's listing.
  """
  if not os.path.isdir(folder):  # a listed scan that does not exist fails when predicted
    return None
  names = _niftis(folder, index)
  for base in _mask_bases(stem):
    candidates = names.get(base + suffix, [])
    for name in [base + suffix + ext for ext in (".nii.gz", ".nii")] + candidates:
      if name in candidates and os.path.isfile(os.path.join(folder, name)):
        return os.path.join(folder, name)
  return None


def _given_mask(stem: str, folder: str, suffix: str, index: dict | None = None) -> str:
  """The mask of scan `stem` in the mask folder the user gave (`predict.mask`); when it has none,
  the path it was expected at, so that the scan fails naming it instead of silently taking
  `image > 0` as its brain: `<base><suffix>.nii.gz` for a stem `<base>_<modality>` (`sub-01_T1w`
  -> `sub-01_mask`), `<stem><suffix>.nii.gz` for one that ends in a number (`patient_001`)."""
  return find_mask(stem, folder, suffix, index) or os.path.join(
      folder, _mask_bases(stem)[-1] + suffix + ".nii.gz")


def split_list(text: str) -> list[str]:
  """The non-empty items of a comma-separated list (`predict.mask`'s files; `input_parts`)."""
  return [t.strip() for t in str(text).split(",") if t.strip()]


def input_parts(spec: str) -> list[str]:
  """`predict.input`'s files and patterns: split at commas, unless the whole is an existing file
  or a pattern that matches files (a path with a comma in it: `Smith, J/T1.nii.gz`)."""
  if "," in spec and (os.path.isfile(spec) or (
      is_pattern(spec) and any(not os.path.isdir(p) for p in glob.iglob(spec, recursive=True)))):
    return [spec]
  return split_list(spec)


def _read_csv(path: str) -> list[tuple[str, str | None]]:
  """(image, mask or None) rows of a CSV with columns image[,mask]; paths relative to the CSV."""
  if not os.path.isfile(path):
    raise ValueError(f"predict.input={path}: CSV file not found")
  try:
    with open(path, newline="", encoding="utf-8-sig") as f:  # -sig: Excel's byte order mark
      reader = csv.DictReader(f)
      fields = [c.strip() for c in reader.fieldnames or []]
      if "image" not in fields:
        sep = next((c for c in ";\t" if len(fields) == 1 and c in fields[0]), "")
        hint = f"; the file is separated by {sep!r}, expected ','" if sep else ""
        raise ValueError(f"predict.input={path}: the CSV needs a header with columns "
                         f"image[,mask]; got {fields}{hint}")
      twice = sorted({c for c in fields if c and fields.count(c) > 1})
      if twice:  # csv.DictReader keeps the last one's values
        raise ValueError(f"predict.input={path}: column(s) {twice} appear twice in the header; "
                         "give one scan per row (columns image[,mask])")
      others = [c for c in fields if c and c not in ("image", "mask")]
      if others and "mask" not in fields:  # the masks under another name: image > 0, silently
        raise ValueError(f"predict.input={path}: column(s) {others} are not read (columns "
                         "image[,mask]); name the brain masks' column 'mask', or remove the "
                         "other columns to use image > 0 as the brain")
      rows = []
      for r in reader:
        if None in r:  # more fields than the header: csv.DictReader keeps them under None
          raise ValueError(f"predict.input={path}: line {reader.line_num} has "
                           f"{len(fields) + len(r[None])} fields, the header {len(fields)}; "
                           "quote a path that holds a comma")
        rows.append({(k or "").strip(): (v or "").strip() for k, v in r.items()})
  except UnicodeDecodeError as e:
    raise ValueError(f"predict.input={path}: not UTF-8 text (byte {e.start}: {e.reason}); save "
                     "it as UTF-8 (e.g. Excel's \"CSV UTF-8\")") from None
  here = os.path.dirname(os.path.abspath(path))
  resolve = lambda p: os.path.join(here, p) if p and not os.path.isabs(p) else p  # noqa: E731
  return [(resolve(r["image"]), resolve(r.get("mask", "")) or None) for r in rows if r["image"]]


def is_pattern(part: str) -> bool:
  """A glob pattern (`*`, `?`, `[...]`, `**` for any depth), not an existing file of that name."""
  return bool(re.search(r"[*?[]", part)) and not os.path.exists(part)


def _is_scan_file(name: str, skip: tuple) -> bool:
  """A NIfTI that is not hidden (`.*`, e.g. macOS `._*`), a mask (`*<mask_suffix>`) or one of
  predict's outputs."""
  return _is_nifti(name) and not name.startswith(".") and not scan_stem(name).endswith(skip)


def _literal_folders(pattern: str) -> str:
  """`pattern` with each folder that exists under its literal name escaped (`data[1]/*.nii.gz`
  -> `data[[]1]/*.nii.gz` when a folder `data[1]` exists): the shell's reading when the
  pattern's own matches nothing."""
  parts = pattern.split(os.sep)
  out = list(parts)  # (each folder looked up under the literal names before it, not escaped)
  for i in range(len(parts) - 1):
    if glob.has_magic(parts[i]) and os.path.isdir(os.sep.join(parts[:i + 1])):
      out[i] = glob.escape(parts[i])
  return os.sep.join(out)


def _matches(pattern: str, skip: tuple) -> list[str]:
  """The scans a glob pattern matches, sorted; ValueError when it matches none. A broken symlink
  (a git-annex file not fetched) is listed, as in a folder: it fails when predicted, named.
  A folder whose name holds `[`, `*` or `?` is read literally when the pattern matches nothing."""
  matched = glob.glob(pattern, recursive=True)
  files = sorted(p for p in matched if not os.path.isdir(p))
  literal = _literal_folders(pattern) if not files else pattern
  if literal != pattern:
    files = sorted(p for p in glob.glob(literal, recursive=True) if not os.path.isdir(p))
  scans = [p for p in files if _is_scan_file(os.path.basename(p), skip)]
  if not scans:
    folders = [] if files else [p for p in matched if os.path.isdir(p)]
    what = (f"{len(files)} file(s), none a scan (masks, predict's outputs, hidden or not "
            f"NIfTI: {os.path.basename(files[0])}, ...)" if files else
            f"{len(folders)} folder(s) and no file ("
            f"{os.path.join(pattern.rstrip('/'), '*.nii.gz')!r} would list the scans in them)"
            if folders else "no file")
    raise ValueError(f"predict.input: the pattern {pattern!r} matches {what} (relative to "
                     f"{os.getcwd()}; quote the pattern so that the shell passes it on as is)")
  return scans


def _example_below(folder: str, skip: tuple) -> tuple[str | None, bool]:
  """(a scan in a subfolder of `folder` or None, whether DICOM files were seen), searching at most
  `WALK_LIMIT` entries (symlinked subfolders included: a loop ends there too)."""
  seen, dicom = 0, False
  for root, dirs, files in os.walk(folder, followlinks=True):
    dirs[:] = sorted(d for d in dirs if not d.startswith("."))
    for name in sorted(files):
      if root != folder and _is_scan_file(name, skip):
        return os.path.join(root, name), dicom
      dicom = dicom or name.lower().endswith(".dcm")
    seen += len(files) + len(dirs)
    if seen > WALK_LIMIT:
      break
  return None, dicom


def _empty_folder_error(folder: str, skip: tuple) -> ValueError:
  """No scan directly in `folder`: one line saying where the scans are, with a pattern that lists
  them (subfolders -> `*`; `<base>_<modality>` -> `*_<modality>`), or that DICOM is not read.
  `skip`: the name endings that are not scans (masks, predict's outputs)."""
  example, dicom = _example_below(folder, skip)
  if example is None:
    hint = ("; it holds DICOM files (.dcm): convert them to NIfTI first (e.g. dcm2niix)"
            if dicom else "")
    return ValueError(f"predict.input={folder}: no .nii/.nii.gz scans in this folder or its "
                      f"subfolders{hint}")
  parts = os.path.relpath(example, folder).split(os.sep)
  stem = scan_stem(parts[-1])
  head, _, tail = stem.rpartition("_")
  name = f"*_{tail}{parts[-1][len(stem):]}" if head else parts[-1]
  pattern = os.path.join(folder, *["*"] * (len(parts) - 1), name)
  return ValueError(f"predict.input={folder}: no .nii/.nii.gz scans in this folder itself, but "
                    f"in its subfolders (e.g. {example}): give a glob pattern, e.g. "
                    f"--config.predict.input='{pattern}' (quoted; '**' matches any depth), or "
                    "a CSV listing them")


def unique_names(images: list[str]) -> list[str]:
  """Each scan's name: its file's stem, or for scans whose stems are equal (case-insensitively)
  while their files are not, the stem prefixed with the folders below the folder they share,
  joined by `_` (`p1/T1.nii.gz`, `p2/T1.nii.gz` -> `p1_T1`, `p2_T1`), so that their outputs do not
  overwrite each other. The same file twice keeps its name (refused by `list_scans`)."""
  stems = [scan_stem(i) for i in images]
  names = list(stems)
  groups = collections.defaultdict(list)
  for k, stem in enumerate(stems):
    groups[stem.casefold()].append(k)
  for members in groups.values():
    if len({os.path.realpath(images[k]) for k in members}) < max(len(members), 2):
      continue  # one scan, or a file listed twice
    dirs = [os.path.dirname(os.path.abspath(images[k])) for k in members]
    common = os.path.commonpath(dirs)
    for k, d in zip(members, dirs):
      rel = [p for p in os.path.relpath(d, common).split(os.sep) if p not in ("", ".")]
      names[k] = "_".join(rel + [stems[k]])
  return names


def _check_lengths(scans: list[Scan]) -> None:
  """ValueError (one line) for the first scan whose name leaves no room for its outputs' file
  names (`NAME_BYTES`): they failed only after the scan was computed ('File name too long')."""
  for s in scans:
    size = len(s.name.encode("utf-8", "surrogateescape"))
    if size > NAME_BYTES:
      how = ("" if s.name == scan_stem(s.image) else
             ", with the folders that tell it from another scan of its file name")
      raise ValueError(f"predict.input: the scan {s.image} would be named '{s.name[:40]}...' "
                       f"({size} bytes{how}; at most {NAME_BYTES}): its outputs' file names would "
                       "exceed the file system's 255-byte limit; shorten its file name or folders "
                       "(or list links with shorter paths)")


def list_scans(input_spec: str, mask_spec: str = "", mask_suffix: str = "_mask"
               ) -> tuple[list[Scan], bool]:
  """(scans, batch) named by `predict.input` / `predict.mask`; batch = one output folder per scan.

  input_spec: one NIfTI file (batch False: today's flat layout; a path holding a comma, when it
    exists, is that file: `input_parts`); a comma-separated list of files;
    a folder (every .nii/.nii.gz in it except masks, `*<mask_suffix>.nii[.gz]`, predict's own
    outputs, `*_anomaly_map` / `*_anomaly_mask`, and hidden files, `.*`); glob patterns (`*`, `?`,
    `[...]`, `**` for any depth; alone or in the list: the files they match except as in a
    folder, e.g. `data/*/anat/*_T1w.nii.gz`); or a .csv with columns image[,mask] (paths relative
    to the CSV).
  mask_spec: '' (folder or pattern input: masks found by `find_mask` next to each scan, the brain
    is `image > 0` for a scan without one; otherwise the brain is `image > 0`); a folder (masks
    found there by `find_mask`: a scan without one fails, naming the mask expected; with an empty
    `mask_suffix` the masks are named like the scans); a file (one scan) or a comma-separated
    list as long as the input list (without patterns).
  Scans are named by `unique_names` (at most `NAME_BYTES`). Raises ValueError (one line) for an
  unusable specification; missing or unreadable scan files are not checked here: they fail on
  their own when predicted.
  """
  spec = str(input_spec).strip()
  mask_spec = str(mask_spec or "").strip()
  mask_dir = mask_spec if mask_spec and os.path.isdir(mask_spec) else ""
  skip = ((mask_suffix,) if mask_suffix else ()) + OUTPUT_SUFFIXES
  index: dict = {}  # each folder's NIfTI names, listed once
  parts = [] if spec.lower().endswith(".csv") or os.path.isdir(spec) else input_parts(spec)
  patterns = any(is_pattern(p) for p in parts)
  if (os.path.isdir(spec) or patterns) and not mask_suffix and not mask_dir:
    where = f"in {spec}" if os.path.isdir(spec) else f"matched by {spec!r}"
    raise ValueError(f"predict.mask_suffix is empty: the masks next to the scans {where} "
                     "cannot be told from the scans; give a suffix (default '_mask') or "
                     "predict.mask=<folder of masks named like the scans>")
  if spec.lower().endswith(".csv"):
    if mask_spec:
      raise ValueError("predict.mask is not used with a CSV input: give masks in its mask column")
    pairs, batch = _read_csv(spec), True
    if not pairs:
      raise ValueError(f"predict.input={spec}: the CSV lists no scans")
  elif os.path.isdir(spec) or patterns:
    if mask_spec and not mask_dir:
      raise ValueError(f"predict.mask={mask_spec}: with a folder or pattern input it must be a "
                       "folder (or empty: masks next to the scans)")
    if os.path.isdir(spec):
      images = [os.path.join(spec, n) for n in sorted(os.listdir(spec))
                if _is_scan_file(n, skip) and not os.path.isdir(os.path.join(spec, n))]
      if not images:
        raise _empty_folder_error(spec, skip)
    else:
      first: dict[str, str] = {}  # a file two patterns match is one scan
      for p in parts:
        for path in _matches(p, skip) if is_pattern(p) else [p]:
          first.setdefault(os.path.realpath(path), path)
      images = list(first.values())
    pairs = [(i, None if mask_dir else find_mask(scan_stem(i), os.path.dirname(i) or ".",
                                                  mask_suffix, index)) for i in images]
    batch = True
  else:
    images, batch = parts, "," in spec and parts != [spec]  # a list, even of one
    if mask_spec and not mask_dir:
      masks = split_list(mask_spec)
      if len(masks) != len(images):
        raise ValueError(f"predict.mask lists {len(masks)} masks for {len(images)} scans; give "
                         "one mask per scan (same order) or a folder of masks")
    pairs = list(zip(images, masks if mask_spec and not mask_dir else [None] * len(images)))
  listed: dict[tuple, int] = {}
  for k, (i, _) in enumerate(pairs):  # one file under two paths of one file name (a symlinked
    # folder): refused here, not as two scans of the same name to rename (`unique_names`)
    if listed.setdefault((os.path.realpath(i), scan_stem(i).casefold()), k) != k:
      raise ValueError(f"predict.input lists {i} twice; list each scan once")
  names = unique_names([i for i, _ in pairs])
  if mask_dir:
    renamed = [i for (i, _), n in zip(pairs, names) if n != scan_stem(i)]
    if renamed:
      raise ValueError(f"predict.mask={mask_dir}: scans in different folders share the file name "
                       f"{scan_stem(renamed[0])!r} ({', '.join(renamed[:2])}), so one folder "
                       "cannot hold a mask for each by name; put each mask next to its scan "
                       "(predict.mask empty) or list the pairs in a CSV (columns image,mask)")
    pairs = [(i, _given_mask(scan_stem(i), mask_dir, mask_suffix, index)) for i, _ in pairs]
  scans = [Scan(n, i, m) for n, (i, m) in zip(names, pairs)]
  _check_lengths(scans)
  seen: dict[str, Scan] = {}
  for s in scans:  # names differing only in case share their files on macOS / Windows
    first_scan = seen.setdefault(s.name.casefold(), s)
    if first_scan is not s and os.path.realpath(first_scan.image) == os.path.realpath(s.image):
      raise ValueError(f"predict.input lists {s.image} twice; list each scan once")
    if first_scan is not s:
      same = (repr(s.name) if first_scan.name == s.name
              else f"{first_scan.name!r} and {s.name!r}")
      raise ValueError(f"predict.input: two scans named {same} ({first_scan.image}, {s.image}); "
                       "outputs are named by scan (case-insensitively), rename one")
  return scans, batch
