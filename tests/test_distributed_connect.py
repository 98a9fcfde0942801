"""`distributed`'s line for processes that never all connect, under each kind of plan (no JAX
connection is made)."""

from __future__ import annotations

from sadm_jax import distributed


def test_the_not_connected_line_under_slurm_names_the_task_and_where_the_coordinator_is(
    monkeypatch):
  """A Slurm plan sets no process id, count or address (JAX detects them): the line took the task
  from SLURM_PROCID / SLURM_NTASKS but said only 'the coordinator JAX detected', leaving the user
  to guess the host whose port must be reachable: JAX puts it on the step's first node."""
  for k, v in {"SLURM_PROCID": "3", "SLURM_NTASKS": "4",
               "SLURM_STEP_NODELIST": "gpu[07-10]"}.items():
    monkeypatch.setenv(k, v)
  line = distributed._not_connected({"local_device_ids": [0, 1]}, 300)
  assert line.startswith("the processes did not all connect within 300 s (this is process 3 of "
                         "4) to the coordinator JAX detected on the first node of the Slurm step "
                         "(SLURM_STEP_NODELIST=gpu[07-10]): did every process start")
  # JAX set the count and the address from Slurm: no setting of the user's to blame for them.
  assert "distributed.num_processes" not in line and "a coordinator host name the other nodes cannot resolve" in line
  explicit = distributed._not_connected(
      {"coordinator_address": "h:1234", "num_processes": 2, "process_id": 1}, 2.5)
  assert explicit.startswith("the processes did not all connect within 2.5 s (this is process 1 "
                             "of 2) to h:1234: did every process start")
  assert "a wrong distributed.num_processes or coordinator address" in explicit
  for k in ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_STEP_NODELIST"):
    monkeypatch.delenv(k)
  assert distributed._not_connected({}, 300).startswith(
      "the processes did not all connect within 300 s to the coordinator JAX detected: did every")
