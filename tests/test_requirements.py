"""requirements.txt locks the environment: every package the pins pull in is pinned, at the installed version."""

from __future__ import annotations

import importlib.metadata as metadata
import os

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.helpers import REPO


def pins(path: str = os.path.join(REPO, "requirements.txt")) -> dict[str, str]:
  """{canonical name: version} of the file's `name==version` lines (comments and blanks skipped)."""
  out = {}
  with open(path, encoding="utf-8") as f:
    for line in f:
      line = line.split("#", 1)[0].strip()
      if not line:
        continue
      req = Requirement(line)
      specs = list(req.specifier)
      assert len(specs) == 1 and specs[0].operator == "==", f"not an exact pin: {line!r}"
      out[canonicalize_name(req.name)] = specs[0].version
  return out


def closure(roots) -> dict[str, str | None]:
  """{canonical name: installed version, None if not installed} of `roots` and everything their
  installed metadata requires on this platform (extras not requested are left out)."""
  seen: dict[str, str | None] = {}
  todo = [canonicalize_name(r) for r in roots]
  while todo:
    name = todo.pop()
    if name in seen:
      continue
    try:
      dist = metadata.distribution(name)
    except metadata.PackageNotFoundError:
      seen[name] = None
      continue
    seen[name] = dist.version
    for spec in dist.requires or []:
      req = Requirement(spec)
      if req.marker is None or req.marker.evaluate({"extra": ""}):
        todo.append(canonicalize_name(req.name))
  return seen


def test_closure_follows_requirements_and_markers():
  """The walk itself, on a package with known dependencies: jax needs jaxlib and ml_dtypes."""
  deps = closure(["jax"])
  assert {"jax", "jaxlib", "ml-dtypes", "numpy"} <= set(deps)
  # jax's extras (its CUDA and TPU plugins, not installed here) are not requested: not walked
  assert all(v is not None for v in deps.values())
  assert closure(["no-such-package-here"]) == {"no-such-package-here": None}


def test_every_dependency_of_the_pins_is_pinned():
  pinned = pins()
  unpinned = sorted(n for n in closure(pinned) if n not in pinned)
  assert not unpinned, (f"requirements.txt does not pin {unpinned}: add them at the versions a "
                        "fresh install resolves (see the file's comment)")


def test_installed_versions_are_the_pinned_ones():
  pinned = pins()
  installed = closure(pinned)
  wrong = {n: (installed.get(n), v) for n, v in pinned.items() if installed.get(n) != v}
  assert not wrong, (f"installed vs pinned: {wrong}; run `pip install -r requirements.txt`")
