"""The sweep report: every reporting member's evaluation rows, tabulated by the evaluation package."""

from __future__ import annotations

import json
import os
from typing import Sequence

from sadm_jax.evaluate import report
from sadm_jax.sweeps.members import Member, Sweep
from sadm_jax.sweeps.runner import DONE, is_done
from sadm_jax.utils import io


def build_report(sweep: Sweep, workdir: str, members: Sequence[Member] | None = None
                 ) -> tuple[list[dict], str]:
  """(rows, markdown): every reporting member's (of `members`, default all) evaluation rows (with
  'member' and 'finished' keys) and one section per member with the evaluation's own
  Table-1-style table (mean ± std over folds). A report without the member's DONE is kept (a
  member evaluated by hand) and marked as not finished in its rows and its section's title;
  members given that do not report are listed."""
  rows, parts, missing, no_report = [], [f"# Sweep {sweep.name}", ""], [], []
  for m in [m for m in (sweep.members if members is None else members) if m.report]:
    path = os.path.join(workdir, m.name, "report", "metrics.json")
    finished = is_done(workdir, m.name)  # else still running, failed later, or run by hand
    if not os.path.exists(path):  # not finished, or finished as a stage that writes no report
      (no_report if finished else missing).append(m.name)
      continue
    try:  # (written whole by the evaluation: damaged, or another tool's, by hand)
      with open(path, encoding="utf-8") as f:
        member_rows = [{**r, "member": m.name, "finished": finished}
                       for r in json.load(f)["rows"]]
      table = report.format_table(member_rows)
    except (OSError, ValueError, KeyError, TypeError) as e:
      text = " ".join(str(e).split())
      raise ValueError(f"{path}: not an evaluation's report ({type(e).__name__}: {text}); remove "
                       f"{os.path.join(workdir, m.name)} to run member {m.name} again") from None
    rows += member_rows
    title = f"## {m.name}" + ("" if finished else f" (not finished: no {DONE}; evaluated by "
                                                  "hand, or the sweep's run of it did not end)")
    parts += [title, "", table, ""]
  if missing:
    parts.append(f"Missing (no report/metrics.json, {len(missing)}): {', '.join(missing)}")
  if no_report:  # was listed as missing, as if it had not run
    parts.append(f"Finished without report/metrics.json (not an evaluation; Member(..., "
                 f"report=False) leaves it out, {len(no_report)}): {', '.join(no_report)}")
  asked = [m.name for m in members or () if not m.report]  # named in --members: was left out
  if asked:  # without a word, the report empty when it was the only one
    parts.append(f"Not reporting (Member(..., report=False), {len(asked)}): {', '.join(asked)}")
  return rows, "\n".join(parts).rstrip("\n") + "\n"


def write_report(sweep: Sweep, workdir: str, members: Sequence[Member] | None = None) -> str:
  rows, md = build_report(sweep, workdir, members)
  io.write_text(os.path.join(workdir, "sweep_report.csv"), report.metrics_csv(rows))
  io.write_text(os.path.join(workdir, "sweep_report.md"), md)
  return md
