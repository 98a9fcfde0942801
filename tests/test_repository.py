"""The repository tracks sources only: no downloaded wheels, archives or other large binaries."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.helpers import REPO

# The largest file the project writes on purpose (BENCHMARKS.md, result JSONs, the demo montage)
# is a few hundred kB; a file past this is almost surely an artefact committed by accident.
MAX_BYTES = 2 * 1024 * 1024
ARTEFACTS = (".whl", ".tar.gz", ".zip", ".so", ".pyc", ".npz", ".nii", ".nii.gz")


def offending(files: dict[str, int]) -> list[str]:
  """{path: size in bytes} -> the paths that are build or download artefacts or too large, each
  with its reason."""
  out = []
  for path, size in sorted(files.items()):
    if path.endswith(ARTEFACTS):
      out.append(f"{path}: a build or download artefact")
    elif size > MAX_BYTES:
      out.append(f"{path}: {size / 2**20:.1f} MiB, over {MAX_BYTES // 2**20} MiB")
  return out


def _tracked() -> dict[str, int]:
  if not os.path.isdir(os.path.join(REPO, ".git")):
    pytest.skip("not a git checkout (a source archive): nothing is tracked")
  names = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, check=True, capture_output=True
                         ).stdout.decode().split("\0")
  return {n: os.path.getsize(os.path.join(REPO, n)) for n in names
          if n and os.path.isfile(os.path.join(REPO, n))}


def test_no_tracked_artefact_or_large_file():
  files = _tracked()
  assert "sadm_jax/main.py" in files  # the listing is the repository's
  assert offending(files) == []


def test_the_check_names_each_kind_of_offence():
  files = {"jaxlib-0.10.2-cp311-cp311-manylinux_2_27_x86_64.whl": 85_448_560,
           "benchmarks/results/huge.json": 3 * 2**20, "docs/demo_montage.png": 362_296,
           "sadm_jax/main.py": 12_000}
  assert offending(files) == [
      "benchmarks/results/huge.json: 3.0 MiB, over 2 MiB",
      "jaxlib-0.10.2-cp311-cp311-manylinux_2_27_x86_64.whl: a build or download artefact"]
