"""Error type for bad input data: every message names the offending file and the problem."""

from __future__ import annotations

from typing import Iterable


class DataError(ValueError):
  """Raised for invalid input data (missing files, corrupt NIfTI, bad CSVs, ...).

  The message always names the offending file(s) and what is wrong with them.
  """


class DataProblems(DataError):
  """Many problems collected in one pass; `problems` holds (path, problem) pairs."""

  def __init__(self, problems: Iterable[tuple[str, str]], header: str = "invalid input data"):
    self.problems = list(problems)
    lines = [f"{header}: {len(self.problems)} problem(s)"]
    lines += [f"  {path}: {problem}" for path, problem in self.problems]
    super().__init__("\n".join(lines))
