"""metrics.jsonl and TensorBoard on resume: steps after the checkpoint (and a torn line) are dropped, the checkpoint step kept."""

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


def _tensorboard_view(tb_dir):
  """{(tag, step): count} as TensorBoard shows the run: event files read in name order, and a
  SessionLog START at step s hides every earlier event at step >= s (TensorBoard's purge)."""
  import glob
  import struct
  from tensorboardX.proto import event_pb2
  seen = []
  for path in sorted(glob.glob(str(tb_dir / "events.out.tfevents.*"))):
    data = open(path, "rb").read()
    pos = 0
    while pos < len(data):
      (n,) = struct.unpack("<Q", data[pos:pos + 8])
      event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + n])
      pos += 12 + n + 4
      if event.HasField("session_log") and event.session_log.status == event_pb2.SessionLog.START:
        seen = [(tag, step) for tag, step in seen if step < event.step]
      for value in event.summary.value:
        seen.append((value.tag, event.step))
  return {key: seen.count(key) for key in seen}


def _log_steps(workdir, start, steps, total=6):
  logger = MetricLogger(str(workdir), total_steps=total, start_step=start)
  for s in steps:
    logger.write(s, {"loss": 1.0 / s})
  logger.close()


def test_tensorboard_resume_keeps_the_checkpoint_step_and_drops_later_ones(tmp_path):
  """Killed after logging steps 1-4 with its last checkpoint at step 3, the resumed run logs 4-6:
  TensorBoard shows each of steps 1-6 once (step 3, logged before its checkpoint, included)."""
  _log_steps(tmp_path, 0, (1, 2, 3, 4))
  import time
  time.sleep(1.1)  # event file names hold the second they were opened
  _log_steps(tmp_path, 3, (4, 5, 6))
  assert _tensorboard_view(tmp_path / "tb") == {("train/loss", s): 1 for s in range(1, 7)}


def test_tensorboard_restart_before_the_first_checkpoint_shows_each_step_once(tmp_path):
  """Killed after logging steps 1-2 and before any checkpoint, the run starts again at step 0."""
  _log_steps(tmp_path, 0, (1, 2))
  import time
  time.sleep(1.1)
  _log_steps(tmp_path, 0, (1, 2, 3))
  assert _tensorboard_view(tmp_path / "tb") == {("train/loss", s): 1 for s in range(1, 4)}
