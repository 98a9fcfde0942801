"""benchmarks/host_malloc.py: each variant's worker starts with its GLIBC_TUNABLES; the block row shows the heap reuse."""

import json
import platform

import pytest

from benchmarks import host_malloc

GLIBC = platform.libc_ver()[0] == "glibc"


@pytest.mark.skipif(not GLIBC, reason="glibc only")
def test_block_row_for_two_variants(tmp_path):
  """With glibc's defaults the freed block is unmapped and faulted in again on every round trip;
  with one heap and no trimming its pages are reused and later round trips fault nothing."""
  out = tmp_path / "r.json"
  r = host_malloc.main(["--variants", "glibc,one_heap", "--steps", "", "--rounds", "1",
                        "--calls", "2", "--out", str(out)])
  (key, row), = r["table"].items()
  assert key.startswith(f"{host_malloc.BLOCK_MIB} MiB block") and row["unit"] == "ms"
  assert row["glibc"] > 0 and row["one_heap"] > 0
  faults = {v: row["rounds"][v][0]["minor_faults"] for v in ("glibc", "one_heap")}
  assert faults["glibc"] > 0 and faults["one_heap"] <= 2
  assert json.loads(out.read_text())["table"].keys() == r["table"].keys()


def test_worker_refuses_an_environment_that_did_not_take(monkeypatch):
  monkeypatch.setenv("GLIBC_TUNABLES", "")
  monkeypatch.delenv("LD_PRELOAD", raising=False)
  with pytest.raises(SystemExit, match="did not take effect"):
    host_malloc.worker("hugetlb", False, [], 1, 1)
  assert host_malloc.worker("glibc", False, [], 1, 1) == {"ops": {}, "steps": {}}
  monkeypatch.setenv("MALLOC_ARENA_MAX", "2")  # would change every variant's allocator
  with pytest.raises(SystemExit, match="MALLOC_ARENA_MAX set in the environment"):
    host_malloc.worker("glibc", False, [], 1, 1)


def test_variants_are_checked_and_need_their_own_processes():
  for bad in ("glibc", "glibc,glibc", "glibc,hugetlb,one_heap", "glibc,x"):
    with pytest.raises(SystemExit):
      host_malloc.parse_args(["--variants", bad])
  with pytest.raises(SystemExit, match="--subprocess 1"):
    host_malloc.main(["--steps", "", "--rounds", "1", "--subprocess", "0", "--out", ""])
