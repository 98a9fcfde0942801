"""Summary of a compile log (`SADM_COMPILE_LOG`): time in tracing, lowering and XLA compilation, by program and by test."""

from __future__ import annotations

# Usage (repository root):
#   SADM_COMPILE_LOG=/tmp/compile.jsonl SADM_TEST_JAX_CACHE=$(mktemp -d) python -m pytest -q tests
#   python -m benchmarks.compile_profile /tmp/compile.jsonl --top 25 [--out result.json]
# Prints totals per event, the programs with the most compilation time (count, seconds) and the
# tests with the most trace + lower + compile time; writes the same as JSON with --out.

import argparse
import collections
import json
import sys

KINDS = ("trace", "lower", "compile", "cache_read")


def read(path: str) -> list[dict]:
  """The log's events (lines that do not parse, e.g. one cut by a killed process, are skipped)."""
  rows = []
  with open(path) as f:
    for line in f:
      try:
        rows.append(json.loads(line))
      except ValueError:
        continue
  return rows


def summarise(rows: list[dict], top: int = 25) -> dict:
  """Totals per event kind, top programs by compile seconds, top tests by trace+lower+compile."""
  totals = {k: {"count": 0, "s": 0.0} for k in KINDS}
  programs = collections.defaultdict(lambda: {"count": 0, "s": 0.0})
  tests = collections.defaultdict(lambda: {k: 0.0 for k in KINDS})
  for r in rows:
    kind = r.get("event")
    if kind not in totals:
      continue
    s = float(r.get("s", 0.0))
    totals[kind]["count"] += 1
    totals[kind]["s"] += s
    if kind == "compile":
      programs[r.get("fun", "")]["count"] += 1
      programs[r.get("fun", "")]["s"] += s
    tests[r.get("test", "") or "(outside a test)"][kind] += s
  by_test = sorted(tests.items(), key=lambda kv: -(kv[1]["trace"] + kv[1]["lower"]
                                                   + kv[1]["compile"]))
  return {"totals": totals,
          "programs": [{"fun": k, **v} for k, v in
                       sorted(programs.items(), key=lambda kv: -kv[1]["s"])[:top]],
          "tests": [{"test": k, **v} for k, v in by_test[:top]]}


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__)
  ap.add_argument("log")
  ap.add_argument("--top", type=int, default=25)
  ap.add_argument("--out", default="")
  args = ap.parse_args(argv)
  try:
    rows = read(args.log)
  except OSError as e:
    print(f"error: {args.log}: {e.strerror}", file=sys.stderr)
    return 2
  s = summarise(rows, args.top)
  for k, v in s["totals"].items():
    print(f"{k:10s} {v['count']:6d} events {v['s']:9.1f} s")
  print(f"\n{'compile s':>9s} {'count':>5s}  program")
  for p in s["programs"]:
    print(f"{p['s']:9.1f} {p['count']:5d}  {p['fun']}")
  print(f"\n{'trace':>7s} {'lower':>7s} {'compile':>7s}  test")
  for t in s["tests"]:
    print(f"{t['trace']:7.1f} {t['lower']:7.1f} {t['compile']:7.1f}  {t['test']}")
  if args.out:
    with open(args.out, "w") as f:
      json.dump({"benchmark": "compile_profile", "log": args.log, **s}, f, indent=1)
  return 0


if __name__ == "__main__":
  sys.exit(main())
