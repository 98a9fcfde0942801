"""metrics.jsonl on resume: lines after the checkpoint and a torn last line are dropped."""

import json

from sadm_jax.train.logger import MetricLogger


def test_resume_drops_later_lines_and_a_torn_line(tmp_path):
  """A run killed (or out of disk space) while appending left half a line: the resumed run
  starts, keeps the lines up to its checkpoint and appends whole lines after them."""
  path = tmp_path / "metrics.jsonl"
  lines = [json.dumps({"step": s, "train/loss": 1.0 / s}) + "\n" for s in (1, 2, 3, 4)]
  path.write_text("".join(lines) + '{"step": 5, "train/lo')
  logger = MetricLogger(str(tmp_path), total_steps=6, start_step=3, tensorboard=False)
  logger.write(4, {"loss": 0.5})
  logger.close()
  assert [json.loads(l) for l in path.read_text().splitlines()] == [
      {"step": 1, "train/loss": 1.0}, {"step": 2, "train/loss": 0.5},
      {"step": 3, "train/loss": 1.0 / 3}, {"step": 4, "train/loss": 0.5}]
