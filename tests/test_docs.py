"""Every "METHOD §x.y" and "Qnn" cited in the code resolves to a heading of docs/method.md."""

from __future__ import annotations

import functools
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METHOD_DOC = os.path.join(ROOT, "docs", "method.md")
# Where citations live; tests/ too (except this file, whose examples are deliberately unresolvable).
SCANNED = ("sadm_jax", "configs", "benchmarks", "tests", "launch", "docs", "README.md")
THIS_FILE = os.path.abspath(__file__)

_NUM = r"\d+(?:\.\d+)*"
# "§4.1", "§4.1–4.2", "§3.2-§3.5"; the word before "§" is kept to skip other documents ("ANCHORS §1").
_SECTION = re.compile(rf"([^\s§]*)\s*§\s*({_NUM})(?:\s*[–-]\s*§?\s*({_NUM}))?")
# "Q8", "Q12–Q14"; not part of a longer word (e.g. "FAQ1", "Q1x").
_QUIRK = re.compile(r"(?<![A-Za-z0-9_])Q(\d{1,2})(?:\s*[–-]\s*Q(\d{1,2}))?(?![A-Za-z0-9_])")
_OTHER_DOCS = ("ANCHORS",)  # documents outside this repository that share the "§" notation
# Files that still cite such a document (owned elsewhere; to be pointed at README or docs/):
# no new ones.
_CITES_OUTSIDE_KNOWN: set[str] = set()  # files allowed to cite one (none)

_DOC_SECTION = re.compile(rf"^#{{1,6}}\s+({_NUM})\.?\s")
_DOC_QUIRK = re.compile(r"^#{1,6}\s+Q(\d{1,2})\b")


def _expand(first: str, last: str | None) -> list[str]:
  """'3.2', '3.5' -> ['3.2', '3.3', '3.4', '3.5']; without `last`, [first]."""
  if not last:
    return [first]
  a, b = first.split("."), last.split(".")
  if len(a) == len(b) and a[:-1] == b[:-1] and int(a[-1]) <= int(b[-1]):
    return [".".join(a[:-1] + [str(i)]) for i in range(int(a[-1]), int(b[-1]) + 1)]
  return [first, last]


def citations(text: str) -> tuple[list[str], list[str]]:
  """(section numbers, quirk numbers) cited in `text`, ranges expanded, in order of appearance."""
  sections, quirks = [], []
  for m in _SECTION.finditer(text):
    if any(doc in m.group(1) for doc in _OTHER_DOCS):
      continue
    sections += _expand(m.group(2), m.group(3))
  for m in _QUIRK.finditer(text):
    last = m.group(2)
    if last and int(last) >= int(m.group(1)):
      quirks += [str(i) for i in range(int(m.group(1)), int(last) + 1)]
    else:
      quirks += [q for q in (m.group(1), last) if q]
  return sections, quirks


@functools.lru_cache(maxsize=4)
def doc_anchors(text: str) -> tuple[frozenset[str], frozenset[str]]:
  """(section numbers, quirk numbers) that have a heading in the method document (parsed once
  per text: `unresolved` asks for every scanned line)."""
  sections, quirks = set(), set()
  for line in text.splitlines():
    if m := _DOC_SECTION.match(line):
      sections.add(m.group(1))
    if m := _DOC_QUIRK.match(line):
      quirks.add(str(int(m.group(1))))
  return frozenset(sections), frozenset(quirks)


def unresolved(text: str, doc_text: str) -> list[str]:
  """Citations in `text` without a heading in `doc_text`, e.g. ['§9.9', 'Q36']."""
  sections, quirks = doc_anchors(doc_text)
  cited_s, cited_q = citations(text)
  return ([f"§{s}" for s in cited_s if s not in sections] +
          [f"Q{q}" for q in cited_q if str(int(q)) not in quirks])


def _scanned_files() -> list[str]:
  out = []
  for entry in SCANNED:
    path = os.path.join(ROOT, entry)
    if os.path.isfile(path):
      out.append(path)
      continue
    for dirpath, dirnames, filenames in os.walk(path):
      dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d != "__pycache__")
      out += [os.path.join(dirpath, f) for f in sorted(filenames)
              if f.endswith((".py", ".md", ".sh", ".sbatch"))
              and os.path.join(dirpath, f) != THIS_FILE]
  return out


def _read(path: str) -> str:
  with open(path, encoding="utf-8") as f:
    return f.read()


@pytest.fixture(scope="module")
def doc_text() -> str:
  assert os.path.isfile(METHOD_DOC), "docs/method.md is missing"
  return _read(METHOD_DOC)


def test_every_code_citation_resolves(doc_text):
  bad, n_checked = [], 0
  for path in _scanned_files():
    for line_no, line in enumerate(_read(path).splitlines(), start=1):
      s, q = citations(line)
      n_checked += len(s) + len(q)
      bad += [f"{os.path.relpath(path, ROOT)}:{line_no}: {c}" for c in unresolved(line, doc_text)]
  assert n_checked > 100, f"only {n_checked} citations found; is the scan still looking in the right place?"
  assert not bad, "citations without a heading in docs/method.md:\n" + "\n".join(bad)


def test_no_citation_of_a_document_outside_the_repository():
  """A reader cannot open "ANCHORS §1": cite docs/method.md or a README section instead."""
  pattern = re.compile(rf"\b(?:{'|'.join(_OTHER_DOCS)})\b")
  found = {os.path.relpath(p, ROOT) for p in _scanned_files() if pattern.search(_read(p))}
  assert found <= _CITES_OUTSIDE_KNOWN, sorted(found - _CITES_OUTSIDE_KNOWN)


def test_faithful_field_list_is_config_faithful_defaults(doc_text):
  """§5's list of what `faithful=True` sets is `FAITHFUL_DEFAULTS`, field for field and value."""
  from sadm_jax import config as config_lib
  start = doc_text.index("`faithful=True` sets the")
  text = doc_text[start:doc_text.index("\n\n", start)]
  listed = dict(re.findall(r"`([a-z_]+\.[a-z_0-9]+)=([^`]+)`", text))
  expected = {f"{section}.{field}":
              repr(faithful) if isinstance(faithful, bool) else f'"{faithful}"'
              for (section, field), (faithful, _) in config_lib.FAITHFUL_DEFAULTS.items()}
  assert listed == expected


def test_readme_lists_exactly_the_keys_that_may_change_on_resume():
  """README "Resuming and workdirs" names the keys of `train.workdir.RESUMABLE`, no more or less."""
  from sadm_jax.train.workdir import RESUMABLE
  text = _read(os.path.join(ROOT, "README.md"))
  start = text.index("change on resume:")
  section = text[start:text.index("`data.loader_workers` may not change", start)]
  listed = {k for k in re.findall(r"`([a-z_]+\.(?:\*|[a-z_.]+))`", section)
            if not k.endswith((".json", ".py"))}
  assert listed == set(RESUMABLE)


def test_readme_stage_table_lists_every_stage():
  from sadm_jax import main as main_lib
  text = _read(os.path.join(ROOT, "README.md"))
  table = text[text.index("\n## Stages"):text.index("\n### Predicting new scans")]
  assert sorted(re.findall(r"^\| `([a-z]+)` \|", table, re.M)) == sorted(main_lib.STAGES)


def test_default_config_defines_every_field():
  """README "Design": configs/default.py defines every field; stage configs only override."""
  import importlib
  from configs import default  # the repository root is on sys.path (tests/ is a package)

  def keys(c, prefix=""):
    out = set()
    for k, v in c.items():
      out |= keys(v, f"{prefix}{k}.") if hasattr(v, "items") else {prefix + k}
    return out
  base = keys(default.get_config())
  for name in sorted(os.listdir(os.path.join(ROOT, "configs"))):
    if name.endswith(".py") and name not in ("__init__.py", "default.py"):
      extra = keys(importlib.import_module(f"configs.{name[:-3]}").get_config()) - base
      assert extra == set(), name


def test_every_environment_variable_the_package_reads_is_documented():
  """Each `SADM_*` variable named in sadm_jax/ is explained in README.md or launch/README.md."""
  names = set()
  for dirpath, _, filenames in os.walk(os.path.join(ROOT, "sadm_jax")):
    for f in filenames:
      if f.endswith(".py"):
        names |= set(re.findall(r"[\"'](SADM_[A-Z_]+)[\"']", _read(os.path.join(dirpath, f))))
  docs = _read(os.path.join(ROOT, "README.md")) + _read(os.path.join(ROOT, "launch", "README.md"))
  assert len(names) >= 5 and not sorted(n for n in names if n not in docs)


def test_quirk_list_is_complete(doc_text):
  _, quirks = doc_anchors(doc_text)
  assert quirks == {str(i) for i in range(1, 36)}


def test_sections_the_code_relies_on_exist(doc_text):
  sections, _ = doc_anchors(doc_text)
  expected = {"0", "1", "2", "2.1", "2.2", "2.3", "2.4", "3", "4", "5"}
  expected |= {f"3.{i}" for i in range(1, 10)} | {f"4.{i}" for i in range(1, 7)}
  assert expected <= sections, sorted(expected - sections)


def test_no_comment_points_at_a_file_outside_the_repository():
  for top in ("sadm_jax", "configs"):
    for dirpath, _, filenames in os.walk(os.path.join(ROOT, top)):
      for f in filenames:
        if f.endswith(".py"):
          text = _read(os.path.join(dirpath, f))
          assert "METHOD.md" not in text, f"{os.path.join(dirpath, f)}: cite docs/method.md"


def test_the_check_can_fail(doc_text):
  assert unresolved("see METHOD §9.9 and quirk Q36", doc_text) == ["§9.9", "Q36"]
  assert unresolved("METHOD §3.2–3.5, Q12–Q14 (ANCHORS §7)", doc_text) == []
  assert citations("METHOD §3.2–3.5 and Q12–Q14")[0] == ["3.2", "3.3", "3.4", "3.5"]
  assert citations("Q12–Q14, FAQ1, Q3x")[1] == ["12", "13", "14"]
  assert citations("(§3.6, §3.9) and (ANCHORS §1)")[0] == ["3.6", "3.9"]
  assert unresolved("(§4.1–4.7)", doc_text) == ["§4.7"]
