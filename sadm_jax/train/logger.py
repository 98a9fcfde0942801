"""Process-0 logging of training scalars: a progress line, metrics.jsonl and TensorBoard event files."""

from __future__ import annotations

import json
import math
import os
import sys
import time

import jax

from sadm_jax.utils import io


def _fmt_seconds(s: float) -> str:
  if not math.isfinite(s):
    return "?"
  s = int(s)
  h, rem = divmod(s, 3600)
  m, sec = divmod(rem, 60)
  return f"{h}h{m:02d}m" if h else f"{m}m{sec:02d}s"


def _step_of(line: str) -> int | None:
  """The step of one metrics.jsonl line; None for a torn or foreign line."""
  try:
    return int(json.loads(line)["step"])
  except (ValueError, KeyError, TypeError):
    return None


class MetricLogger:
  """Writes only on process 0. `metrics.jsonl` holds one JSON object per logged step."""

  def __init__(self, workdir: str, total_steps: int, start_step: int = 0, tensorboard: bool = True):
    self.enabled = jax.process_index() == 0
    self.path = os.path.join(workdir, "metrics.jsonl")
    self.total = total_steps
    self._t0, self._s0 = time.time(), start_step
    self._writer = None
    if not self.enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    self._truncate_after(start_step)
    if tensorboard:
      from tensorboardX import SummaryWriter
      # TensorBoard hides every earlier event at a step >= purge_step: those a killed run logged
      # after its checkpoint (also before the first one), not the checkpoint step's own, which
      # was logged before it was saved and is not logged again.
      self._writer = SummaryWriter(os.path.join(workdir, "tb"), purge_step=start_step + 1)

  def _truncate_after(self, step: int) -> None:
    """A resumed run drops lines a killed run logged after its last checkpoint, and a line it
    left torn (killed or out of disk space while appending it)."""
    if not os.path.exists(self.path):
      return
    with open(self.path, encoding="utf-8") as f:
      lines = [ln for ln in f if ln.strip()]
    keep = [ln for ln in lines
            if ln.endswith("\n") and (s := _step_of(ln)) is not None and s <= step]
    if len(keep) != len(lines):
      io.write_text(self.path, "".join(keep))

  def write(self, step: int, scalars: dict[str, float], prefix: str = "train") -> None:
    if not self.enabled:
      return
    record = {"step": int(step), **{f"{prefix}/{k}": float(v) for k, v in scalars.items()}}
    with open(self.path, "a", encoding="utf-8") as f:
      f.write(json.dumps(record) + "\n")
    if self._writer is not None:
      for k, v in scalars.items():
        self._writer.add_scalar(f"{prefix}/{k}", float(v), step)

  def progress(self, step: int, scalars: dict[str, float]) -> None:
    if not self.enabled:
      return
    elapsed = time.time() - self._t0
    rate = (step - self._s0) / elapsed if elapsed > 0 else float("nan")
    eta = (self.total - step) / rate if rate and rate > 0 else float("nan")
    shown = " | ".join(f"{k} {v:.5g}" for k, v in scalars.items())
    print(f"step {step}/{self.total} | {shown} | {rate:.2f} steps/s | ETA {_fmt_seconds(eta)}",
          file=sys.stdout, flush=True)

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()
