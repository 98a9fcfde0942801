"""Multi-process training: start-up decisions, and 2 processes × 4 CPU devices against one process × 8."""

import json
import os

import numpy as np
import pytest

from sadm_jax import distributed
from sadm_jax.train import loop
from configs import default
from tests import loopback
from tests.train import distributed_driver
from tests.helpers import metric_series


def _config(**fields):
  c = default.get_config()
  for k, v in fields.items():
    c.distributed[k] = v
  return c


def test_a_limited_mesh_takes_an_equal_share_of_every_process():
  """mesh.num_devices below the device count of several processes: the same number of devices
  from each process. (The mesh was the first devices, all of process 0's: process 1 then failed
  to place its part of each batch, StopIteration, and process 0 built global batches of its own
  half only.)"""
  import dataclasses

  from sadm_jax.train import sharding

  @dataclasses.dataclass(frozen=True)
  class Device:  # what the mesh asks of a device
    id: int
    process_index: int

  devices = [Device(i, i // 4) for i in range(8)]  # 2 processes × 4
  c = default.get_config()
  c.mesh.num_devices = 4
  mesh = sharding.make_mesh(c, devices)
  assert [(d.id, d.process_index) for d in mesh.devices.flat] == [(0, 0), (1, 0), (4, 1), (5, 1)]
  c.mesh.num_devices = 0
  assert list(sharding.make_mesh(c, devices).devices.flat) == devices
  c.mesh.num_devices = 3
  with pytest.raises(ValueError, match="same number of devices from each of the 2 processes"):
    sharding.make_mesh(c, devices)
  c.mesh.num_devices = 2
  one = [Device(i, 0) for i in range(4)]  # one process: its first devices, as always
  assert list(sharding.make_mesh(c, one).devices.flat) == one[:2]


def test_plan_single_process_by_default():
  assert distributed.plan(_config(), {}) == distributed.Plan(None)
  assert distributed.plan(None, {"SLURM_NTASKS": "1", "SLURM_PROCID": "0"}).source is None
  # sbatch's own shell (no srun step) has SLURM_NTASKS > 1 but is one process.
  assert distributed.plan(None, {"SLURM_NTASKS": "8", "SLURM_JOB_ID": "1"}).source is None
  assert distributed.plan(None, {"TPU_WORKER_HOSTNAMES": "localhost"}).source is None


def test_plan_explicit_config_wins_and_skips_cluster_detection():
  env = {"JAX_COORDINATOR_ADDRESS": "other:1", "JAX_NUM_PROCESSES": "4", "SLURM_NTASKS": "8"}
  p = distributed.plan(_config(coordinator_address="h:1234", num_processes=2, process_id=1), env)
  assert p.source == "config"
  assert p.kwargs == {"coordinator_address": "h:1234", "num_processes": 2, "process_id": 1,
                      "cluster_detection_method": "deactivate"}
  # A partial config leaves the rest to JAX's detection; num_processes=1 forces one process.
  assert distributed.plan(_config(num_processes=4), {}).kwargs == {"num_processes": 4}
  assert distributed.plan(_config(num_processes=1), env).source is None


@pytest.mark.parametrize("fields,expected", [
    # taken for "not set": the run went on as one process
    ({"num_processes": -1}, r"--config.distributed.num_processes=-1 must be >= 1 \(0 = not set\)"),
    ({"process_id": -2}, r"--config.distributed.process_id=-2 must be in \[0, num_processes - 1\]"),
    # JAX's own message named neither setting, after jax.distributed had started
    ({"num_processes": 2, "process_id": 5, "coordinator_address": "h:1"},
     r"--config.distributed.process_id=5 must be in \[0, 1\] \(-1 = not set\)"),
])
def test_plan_refuses_impossible_process_numbers(fields, expected):
  with pytest.raises(ValueError, match="^" + expected):
    distributed.plan(_config(**fields), {})
  from sadm_jax import config as config_lib, validate  # and up front, e.g. for a sweep's members
  c = default.get_config()
  c.stage = "cddpm"
  c.distributed.update(fields)
  with pytest.raises(validate.ConfigError, match="^" + expected):
    validate.check_values(c, config_lib.STAGES)


def test_plan_from_environment():
  env = {"JAX_COORDINATOR_ADDRESS": "10.0.0.1:9999", "JAX_NUM_PROCESSES": "2",
         "JAX_PROCESS_ID": "1"}
  p = distributed.plan(None, env)
  assert p.source == "env" and p.kwargs["process_id"] == 1 and p.kwargs["num_processes"] == 2
  assert distributed.plan(None, {**env, "JAX_NUM_PROCESSES": "1"}).source is None
  assert distributed.plan(None, {**env, "SADM_DISTRIBUTED": "off"}).source is None
  assert distributed.plan(None, {"SADM_DISTRIBUTED": "auto"}) == distributed.Plan("auto")
  with pytest.raises(ValueError, match="SADM_DISTRIBUTED='yes'"):
    distributed.plan(None, {"SADM_DISTRIBUTED": "yes"})
  with pytest.raises(ValueError, match="JAX_NUM_PROCESSES='two'"):
    distributed.plan(None, {"JAX_NUM_PROCESSES": "two"})


def test_plan_slurm_and_tpu():
  step = {"SLURM_NTASKS": "16", "SLURM_PROCID": "3", "SLURM_STEP_NODELIST": "n[1-2]",
          "SLURM_STEP_NUM_NODES": "2", "SLURM_JOB_ID": "7"}
  assert distributed.plan(None, step) == distributed.Plan("slurm")  # per GPU: JAX's defaults
  per_node = {**step, "SLURM_NTASKS": "2", "CUDA_VISIBLE_DEVICES": "0,1,2,3"}
  assert distributed.plan(None, per_node).kwargs == {"local_device_ids": [0, 1, 2, 3]}
  # Slurm bound each task to its own GPU(s) (--gpus-per-task, --gpu-bind): CUDA_VISIBLE_DEVICES
  # lists only them, so JAX's default (device SLURM_LOCALID) would name a device the task lacks.
  bound = {**step, "SLURM_LOCALID": "3", "CUDA_VISIBLE_DEVICES": "3"}
  assert distributed.plan(None, bound).kwargs == {"local_device_ids": [0]}
  bound2 = {**step, "SLURM_LOCALID": "3", "CUDA_VISIBLE_DEVICES": "6,7"}
  assert distributed.plan(None, bound2).kwargs == {"local_device_ids": [0, 1]}
  shared = {**step, "SLURM_LOCALID": "3", "CUDA_VISIBLE_DEVICES": "0,1,2,3,4,5,6,7"}
  assert distributed.plan(None, shared) == distributed.Plan("slurm")  # device 3 of 8: JAX's
  first = {**step, "SLURM_LOCALID": "0", "CUDA_VISIBLE_DEVICES": "5"}
  assert distributed.plan(None, first).kwargs == {"local_device_ids": [0]}
  assert distributed.plan(None, {"TPU_WORKER_HOSTNAMES": "w0,w1,w2,w3"}).source == "tpu"
  assert distributed.plan(None, {"MEGASCALE_NUM_SLICES": "2"}).source == "tpu"


def _launch(out: str, runs: str, timeout: float = 420.0) -> list[str]:
  """Runs 2 driver processes on loopback; kills both process groups on timeout or failure."""
  env = {**os.environ}
  env.pop("XLA_FLAGS", None)  # the driver sets 4 devices per process itself
  port = loopback.free_port()
  results = loopback.run_processes(
      lambda pid: ["tests.train.distributed_driver", f"--coordinator=127.0.0.1:{port}",
                   "--num_processes=2", f"--process_id={pid}", "--devices=4", f"--out={out}",
                   f"--runs={runs}"], 2, out, env, timeout)
  for code, stdout, stderr in results:
    assert code == 0, (stdout + stderr)[-4000:]
  return [stdout + stderr for _, stdout, stderr in results]


def test_a_start_or_resume_refused_on_one_process_stops_both(tmp_path):
  """2 processes on loopback. Building the task fails on process 1 alone (stage II's frozen
  cDDPM unreadable on its host: `runs.open_run` refuses): both stop at the start, process 1 with
  its own line, process 0 with one naming process 1's; before, process 0 went on into training's
  collectives (Orbax's barriers) and waited there for process 1, which had stopped.
  Then (the processes still in step) dp/ trains 2 steps and is resumed while process 1 cannot read
  its checkpoint: both stop with one line naming process 1, and the step is kept; before, process
  0 waited in Orbax's restore barrier, process 1's moving the step aside mismatched it, process 0
  took that for damage and moved the healthy step aside, then waited for process 1 (gone, with a
  traceback) until killed. A SIGTERM that reaches process 1 alone in the start (its task, its
  agreement), the set-up, or as it reads the step, stops both; so does one in the agreement of a
  `together` block or of the start-up checks outside training.
  """
  out = tmp_path / "refused"
  out.mkdir()
  _launch(str(out), "termstart:1,termsetup:1,termagree:1,termtogether:1,termchecks:1,"
          "termshare:1,failshare:1,refuse:1,dp:2,termrestore:3:1,unreadable:3:1", timeout=120)
  results = [json.load(open(out / f"result_{i}.json"))["runs"] for i in range(2)]
  # A SIGTERM that reached process 1 alone during the start, or the set-up after it, stops both
  # as a SIGTERM (exit 143); before, process 0 waited for process 1 in a collective, for ever
  assert [r.pop(0)["error"] for r in results] == ["Terminated: ", "Terminated: "]
  assert [r.pop(0)["error"] for r in results] == ["Terminated: ", "Terminated: "]
  assert not os.listdir(out / "termsetup" / "checkpoints")
  assert [r.pop(0)["error"] for r in results] == ["Terminated: ", "Terminated: "]  # termagree
  # Outside training (an evaluation's `together` block, the start-up checks of `run_checked`):
  # a SIGTERM to process 1 alone as it waits for process 0 in the agreement stops both; before,
  # process 1 left the collective at once, and process 0 waited there for it until JAX's timeout
  assert [r.pop(0)["error"] for r in results] == ["Terminated: ", "Terminated: "]  # together
  assert [r.pop(0)["error"] for r in results] == ["Terminated: ", "Terminated: "]  # checks
  # A SIGTERM to process 1 (or an error there) in its share of a long block (an evaluation's
  # passes, 300 batches of 0.1 s): process 0 stops within a batch or two of it, not after its
  # own 300 (30 s; with real shares, minutes past the scheduler's grace)
  share = [r.pop(0) for r in results]
  assert [r["error"] for r in share] == ["Terminated: ", "Terminated: "]
  assert share[1]["batches"] == 2 and share[0]["batches"] < 20, share
  share = [r.pop(0) for r in results]
  assert [r["error"] for r in share] == [
      "OtherProcessFailed: process 1 of 2 failed (volume 3: NaN scores) during the shares; every "
      "process stopped", "ValueError: volume 3: NaN scores"]
  assert share[1]["batches"] == 2 and share[0]["batches"] < 20, share
  line = (f"sadm.cddpm_workdir={out / 'refuse' / 'no_run'}: not a trained cddpm run (no best "
          f"checkpoint in {out / 'refuse' / 'no_run' / 'best'})")
  assert [r[0]["error"] for r in results] == [
      f"OtherProcessFailed: process 1 of 2 failed ({line}) during the training's start; every "
      "process stopped", f"RunError: {line}"]
  assert not os.path.exists(out / "refuse" / "checkpoints")
  assert [r[1]["step"] for r in results] == [2, 2]
  unreadable = (f"RunError: {out / 'dp' / 'checkpoints'}: checkpoint step 2 cannot be restored on "
                f"process 1 of 2 (PermissionError: [Errno 13] Permission denied: "
                f"'{out / 'dp' / 'checkpoints'}') but can on process 0: does every host see the "
                "same files there? (nothing was moved aside; if they do, files only process 1 "
                "reads are damaged: move 2/ aside by hand to resume from the step before)")
  # a SIGTERM that reached process 1 alone as it read the step: both stop as a SIGTERM, nothing
  # moved aside (before, process 0 waited for process 1's outcome for ever)
  assert [r.pop(2)["error"] for r in results] == ["Terminated: ", "Terminated: "]
  assert [r[2]["error"] for r in results] == [unreadable, unreadable]
  assert sorted(os.listdir(out / "dp" / "checkpoints")) == ["2"]


def test_two_processes_match_one_process(tmp_path):
  """2 processes × 4 fake CPU devices on loopback vs 1 process × 8 (conftest), global batch 16.

  The multi-process run trains steps 1–2, saves (Orbax, both processes), is restored by a new
  `loop.train` in the same 2 processes and trains step 3; then FSDP trains 3 steps from scratch.
  Then a SIGTERM reaches process 1 alone as it takes step 3's batch (a scheduler's stop; the
  checkpoints are at every 2nd step): both processes save step 3 and stop; the rerun trains step
  4 from it. Tolerance: rtol 1e-5 / atol 1e-6 on losses (float32 reductions split differently;
  observed equal to the last bit on this machine).
  """
  out = tmp_path / "multi"
  out.mkdir()
  logs = _launch(str(out), "dp:2,dp:3,fsdp:3,stop:4:3:1,stop:4")
  config = distributed_driver.toy_config(False, 4)
  ref = tmp_path / "single"
  loop.train(config, str(ref), distributed_driver.toy_task(config))

  results = [json.load(open(out / f"result_{i}.json")) for i in range(2)]
  for i, r in enumerate(results):
    assert (r["plan"], r["process_index"], r["process_count"]) == ("config", i, 2)
    assert (r["devices"], r["local_devices"]) == (8, 4)
    assert r["preemption_service"] is False  # SIGTERM is sadm_jax's: train/stopping.py
    assert r["runs"][3] == {"kind": "stop", "terminated": True, "latest": 3}  # both stopped at 3
    assert r["runs"][4]["step"] == 4
  dp_resumed, fsdp = results[0]["runs"][1], results[0]["runs"][2]
  assert dp_resumed["kernel_spec"] == "P()"
  assert fsdp["kernel_spec"] == "P(None, None, None, 'data')"  # sharded across both processes

  want = metric_series(str(ref), "train/loss")
  assert [s for s, _ in want] == [1, 2, 3, 4]
  want_val = dict(metric_series(str(ref), "val/loss"))
  for kind, steps in (("dp", 3), ("fsdp", 3), ("stop", 4)):
    got = metric_series(str(out / kind), "train/loss")
    assert [s for s, _ in got] == list(range(1, steps + 1)), kind
    np.testing.assert_allclose([v for _, v in got], [v for _, v in want[:steps]], rtol=1e-5,
                               atol=1e-6)
    got_val = metric_series(str(out / kind), "val/loss")[-1]
    np.testing.assert_allclose(got_val[1], want_val[got_val[0]], rtol=1e-5)
  assert "SIGTERM (process 1): checkpoint step 3 saved; stopping" in logs[0]
  assert "resumed from checkpoint step 3" in logs[0]
  # Both processes wrote their data-iterator state; only process 0 logged.
  data = sorted(f for f in os.listdir(out / "dp" / "checkpoints" / "2" / "data")
                if f.startswith("process_"))
  assert data == ["process_0-of-2.json", "process_1-of-2.json"]
  assert "resumed from checkpoint step 2" in logs[0]
  assert "step 3/3" in logs[0]
  assert not [ln for ln in logs[1].splitlines()
              if ln.startswith(("step ", "process ", "resumed", "SIGTERM"))]
  assert logs[0].startswith("process 0/2, 8 devices (4 local, cpu), mesh data=8")
