"""Multi-process start-up: decide whether this run spans several processes and initialise `jax.distributed`."""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import threading
import time
from typing import Any, Mapping

import ml_collections

# SADM_DISTRIBUTED=auto: call jax.distributed.initialize() with no arguments and let JAX detect the
# cluster (Cloud TPU VM pods via the metadata server, SLURM, Open MPI); launch/tpu_vm.sh sets it.
# SADM_DISTRIBUTED=off: never initialise (one process, whatever the environment says).
MODE_VAR = "SADM_DISTRIBUTED"
GPUS_VAR = "SADM_NUM_GPUS"  # launch/local_gpus.sh's NUM_GPUS: the GPUs this process must see
# who set GPUS_VAR: unset for launch/local_gpus.sh, "slurm" for launch/slurm.sbatch (the GPUs Slurm
# gave the task), for the advice of the line `gpu_shortfall` gives
GPUS_FROM_VAR = "SADM_GPUS_FROM"
# A SIGTERM held while the processes connect (`initialize`, `signals.held`): how long this one
# still waits for the others, to tell them at the start-up checks, before it stops alone
JOIN_GRACE_S = 10.0
# JAX aborts the process (a C++ check failure and its stack) when the processes have not all
# connected by its `initialization_timeout`: it is given this much more than
# `distributed.connect_timeout`, at which this process stops with one line first
ABORT_MARGIN_S = 60
# `distributed.connect_timeout` when a config does not say (a Plan built without one): JAX's own
CONNECT_TIMEOUT_S = 300.0
# The longest a process ending with the others waits for them in JAX's shutdown barrier (`leave`).
LEAVE_TIMEOUT_S = 30.0


@dataclasses.dataclass(frozen=True)
class Plan:
  """How to call `jax.distributed.initialize`; `source` is None for a single-process run."""
  source: str | None  # 'config' | 'env' | 'slurm' | 'tpu' | 'auto' | None
  kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
  connect_timeout: float = CONNECT_TIMEOUT_S  # `distributed.connect_timeout` (s)


def _int(environ: Mapping[str, str], name: str, default: int) -> int:
  value = environ.get(name, "")
  try:
    return int(value) if value.strip() else default
  except ValueError:
    raise ValueError(f"environment variable {name}={value!r} is not an integer") from None


def _explicit(address: str, num_processes: int, process_id: int, source: str) -> Plan:
  kwargs: dict[str, Any] = {}
  if address:
    kwargs["coordinator_address"] = address
  if num_processes > 0:
    kwargs["num_processes"] = num_processes
  if process_id >= 0:
    kwargs["process_id"] = process_id
  if len(kwargs) == 3:
    # Everything is known: skip JAX's cluster detection, which under SLURM would otherwise
    # narrow each process to one GPU (wrong for one process per node).
    kwargs["cluster_detection_method"] = "deactivate"
  return Plan(source, kwargs)


def _slurm_plan(environ: Mapping[str, str]) -> Plan | None:
  """Inside an `srun` step with several tasks; JAX's SLURM detection fills in the rest."""
  if _int(environ, "SLURM_NTASKS", 1) <= 1 or "SLURM_PROCID" not in environ \
      or "SLURM_STEP_NODELIST" not in environ:
    return None
  kwargs: dict[str, Any] = {}
  nodes = _int(environ, "SLURM_STEP_NUM_NODES", _int(environ, "SLURM_NNODES", 0))
  visible = [d for d in environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
  if nodes and _int(environ, "SLURM_NTASKS", 1) == nodes and visible:
    kwargs["local_device_ids"] = list(range(len(visible)))  # one process per node: all its GPUs
  elif visible and (len(visible) == 1 or _int(environ, "SLURM_LOCALID", 0) >= len(visible)):
    # Slurm bound this task to its own GPU(s) (--gpus-per-task, --gpu-bind): they are all it
    # sees, so JAX's default (local device SLURM_LOCALID) would name a device it does not have.
    kwargs["local_device_ids"] = list(range(len(visible)))
  return Plan("slurm", kwargs)


def _tpu_plan(environ: Mapping[str, str]) -> Plan | None:
  """A multi-host TPU slice that announces its workers in the environment (GKE, multislice)."""
  hosts = environ.get("TPU_PROCESS_ADDRESSES") or environ.get("TPU_WORKER_HOSTNAMES") or ""
  if len([h for h in hosts.split(",") if h.strip()]) > 1 or _int(environ, "MEGASCALE_NUM_SLICES", 1) > 1:
    return Plan("tpu")
  return None


def check_settings(d: ml_collections.ConfigDict) -> None:
  """`config.distributed`'s numbers can be: ValueError (one line) otherwise (negative values were
  taken for "not set" without a word). `plan` and `validate.check_values` (a sweep's members, up
  front) call it."""
  if d.num_processes < 0:
    raise ValueError(f"--config.distributed.num_processes={d.num_processes} must be >= 1 (0 = "
                     "not set)")
  if d.process_id < -1 or (d.num_processes > 0 and d.process_id >= d.num_processes):
    raise ValueError(f"--config.distributed.process_id={d.process_id} must be in [0, "
                     f"{d.num_processes - 1 if d.num_processes > 0 else 'num_processes - 1'}] "
                     "(-1 = not set)")
  if not d.get("connect_timeout", CONNECT_TIMEOUT_S) > 0:
    raise ValueError(f"--config.distributed.connect_timeout={d.connect_timeout} must be > 0 "
                     "(seconds)")


def plan(config: ml_collections.ConfigDict | None = None,
         environ: Mapping[str, str] | None = None) -> Plan:
  """Decides how (and whether) to initialise, without touching JAX.

  Precedence: `config.distributed` (any field set) > SADM_DISTRIBUTED > JAX_COORDINATOR_ADDRESS /
  JAX_NUM_PROCESSES / JAX_PROCESS_ID > SLURM (SLURM_NTASKS > 1 inside srun) > multi-host TPU
  environment > single process. `num_processes=1` (config or env) forces a single process.
  """
  environ = os.environ if environ is None else environ
  d = config.distributed if config is not None and "distributed" in config else None
  if d is not None:
    check_settings(d)
    return dataclasses.replace(_plan(d, environ),
                               connect_timeout=float(d.get("connect_timeout", CONNECT_TIMEOUT_S)))
  return _plan(None, environ)


def _plan(d: ml_collections.ConfigDict | None, environ: Mapping[str, str]) -> Plan:
  if d is not None and (d.coordinator_address or d.num_processes > 0 or d.process_id >= 0):
    if d.num_processes == 1:
      return Plan(None)
    return _explicit(d.coordinator_address, int(d.num_processes), int(d.process_id), "config")
  mode = environ.get(MODE_VAR, "").strip().lower()
  if mode == "off":
    return Plan(None)
  if mode == "auto":
    return Plan("auto")
  if mode:
    raise ValueError(f"{MODE_VAR}={mode!r}: expected 'auto', 'off' or unset")
  address = environ.get("JAX_COORDINATOR_ADDRESS", "")
  num = _int(environ, "JAX_NUM_PROCESSES", 0)
  if address or num > 1:
    if num == 1:
      return Plan(None)
    return _explicit(address, num, _int(environ, "JAX_PROCESS_ID", -1), "env")
  return _slurm_plan(environ) or _tpu_plan(environ) or Plan(None)


def maybe_initialize(config: ml_collections.ConfigDict | None = None,
                     environ: Mapping[str, str] | None = None) -> Plan:
  """Initialises `jax.distributed` when more than one process is launched; returns the plan.

  Must run before anything touches a JAX backend (`jax.devices()`, any array). Calling it again
  after a successful initialisation is a no-op.
  """
  return initialize(plan(config, environ))


def initialize(p: Plan) -> Plan:
  """Initialises `jax.distributed` by plan `p` (`plan`) unless it is a single process or already
  initialised; returns `p`. Must run before anything touches a JAX backend."""
  if p.source is None:
    return p
  import jax
  if jax.distributed.is_initialized():
    return p
  logging.info("initialising jax.distributed (%s): %s", p.source, p.kwargs)
  # JAX's preemption service would catch SIGTERM in C++ from here on, and until `sadm_jax.main`
  # installs its own handler a SIGTERM was swallowed: the run went on until the scheduler's
  # SIGKILL. Training agrees on its stop step itself (`train/stopping.py`).
  jax.config.update("jax_enable_preemption_service", False)
  _connect(p.kwargs, p.connect_timeout)
  return p


def _not_connected(kwargs: dict, timeout: float) -> str:
  """The line for processes that did not all connect within `timeout` seconds."""
  n = kwargs.get("num_processes") or os.environ.get("SLURM_NTASKS") or "all"
  me = kwargs.get("process_id", os.environ.get("SLURM_PROCID"))
  where = kwargs.get("coordinator_address") or "the coordinator JAX detected"
  nodes = os.environ.get("SLURM_STEP_NODELIST")
  if not kwargs.get("coordinator_address") and nodes:  # JAX's Slurm detection: the first node
    where += f" on the first node of the Slurm step (SLURM_STEP_NODELIST={nodes})"
  # Set by the user (config or launch script) or detected by JAX (Slurm, TPU pods): only the
  # former can be a wrong setting to name.
  wrong = ("a wrong distributed.num_processes or coordinator address, "
           if kwargs.get("coordinator_address") or kwargs.get("num_processes") else
           "a coordinator host name the other nodes cannot resolve, ")
  return (f"the processes did not all connect within {timeout:g} s"
          f"{f' (this is process {me} of {n})' if me is not None else ''} to {where}: did every "
          f"process start (a task that failed, a node that is gone, {wrong}a firewall)? See the "
          "others' logs; raise --config.distributed.connect_timeout if they start slowly")


def _connect(kwargs: dict, timeout: float = CONNECT_TIMEOUT_S) -> None:
  """`jax.distributed.initialize(**kwargs)` in a thread while the main thread waits in Python,
  where signal handlers run. It waits for every process to connect, in C++, up to JAX's timeout
  (5 minutes); a SIGTERM then ran no handler until it was over (a process whose peers never came
  could not be stopped). One held for the start-up checks (`signals.held`) stops this process
  (`signals.Terminated`) if the others are not all there `JOIN_GRACE_S` later: it cannot tell
  them before. Processes that have not all connected within `timeout` seconds stop with one
  line (ValueError) before JAX's own deadline (`ABORT_MARGIN_S` later) aborts them in C++."""
  import jax

  from sadm_jax.utils import signals
  done, failed = threading.Event(), []
  jax_kwargs = {**kwargs, "initialization_timeout": int(math.ceil(timeout)) + ABORT_MARGIN_S}

  def connect() -> None:
    try:
      jax.distributed.initialize(**jax_kwargs)
    except BaseException as e:  # noqa: BLE001  (raised in the main thread)
      failed.append(e)
    finally:
      done.set()
  threading.Thread(target=connect, daemon=True, name="jax-distributed-connect").start()
  hold, since, start = signals.current_hold(), None, time.monotonic()
  while not done.wait(0.1):
    if time.monotonic() - start > timeout:
      raise NotConnected(_not_connected(kwargs, timeout))
    if hold is not None and hold.requested:
      since = time.monotonic() if since is None else since
      if time.monotonic() - since > JOIN_GRACE_S:
        raise signals.Terminated
  if failed:
    raise failed[0]
  global _connected
  _connected = True


class NotConnected(ValueError):
  """The processes did not all connect in time: `main` prints the line and ends the process at
  once (JAX's connecting thread cannot be stopped; the interpreter's teardown would wait on it)."""


def coordination_client():
  """JAX's coordination-service client of this job (key-value store, barriers: no device
  involved), None unless `jax.distributed` is initialised."""
  from jax._src import distributed as jax_distributed
  return jax_distributed.global_state.client


# What JAX's CPU collectives (gloo) say when a process of the job is gone without a word (SIGKILL,
# the OOM killer, a crash, a lost host): its connection closed, or it never came to a first
# collective (JAX's 30 s gloo set-up). GPU collectives (NCCL) say nothing: they wait.
_GONE_MARKS = ("Connection closed by peer", "Connection reset by peer",
               "Gloo context initialization failed")


_connected = False  # this process joined a job of several processes (`_connect`)
_peer_gone = False  # a `ProcessGone` was raised in this process


def leave(timeout_s: float = LEAVE_TIMEOUT_S) -> None:
  """Ends this process's part in a job of several processes (`jax.distributed`'s shutdown barrier,
  bounded by `timeout_s`) before a failed or interrupted stage ends it without the interpreter's
  teardown (`main.exit_now`). Process 0 hosts the coordination service: when it ended first,
  every process still on its way out (printing its line, waiting for a checkpoint write) found
  the service gone and JAX aborted it with a C++ check-failure trace (SIGABRT) instead of its own
  line and exit code. In the barrier every process waits for the others, then leaves the service
  before process 0 stops it. Nothing with one process, unless all connected (`_connect`), or
  after another process was found gone (`ProcessGone`: it would never come). Costs: a process
  the others do not join (one that failed alone while they wait in a collective, or whose peer
  was killed meanwhile) waits the whole `timeout_s` (it ended at once before), and the others
  are aborted by JAX as before if process 0 is killed during the wait."""
  if not _connected or _peer_gone:
    return
  done = threading.Thread(target=_shutdown_quietly, daemon=True)
  done.start()
  done.join(timeout_s)


def _shutdown_quietly() -> None:
  import jax
  try:
    jax.distributed.shutdown()
  except Exception:  # noqa: BLE001  (the barrier failed: the process ends anyway)
    logging.debug("jax.distributed.shutdown failed", exc_info=True)


class ProcessGone(ValueError):
  """A collective of the package's agreements failed because another process is gone (killed,
  out of memory, crashed, its host lost): one line and exit code 2 from the command line, which
  ends the process at once (`main.exit_now`). Raised as JAX's runtime error, the run printed a
  traceback and then waited in `jax.distributed`'s shutdown barrier for the dead process until
  the coordination service's heartbeat timeout (100 s) aborted it with a C++ trace."""

  def __init__(self, detail: str, what: str | None = None) -> None:
    import jax
    global _peer_gone
    _peer_gone = True  # no shutdown barrier for this process (`leave`): one would wait for it
    self.detail = detail
    super().__init__(f"another of the {jax.process_count()} processes is gone (killed? out of "
                     f"memory? a lost host?) during {what or 'a collective'}; this process "
                     f"stopped too: run the same command again to resume (JAX: {detail})")

  def during(self, what: str) -> "ProcessGone":
    return ProcessGone(self.detail, what)


def multihost_allgather(x):
  """`jax.experimental.multihost_utils.process_allgather` (a collective); `ProcessGone` when
  another process is gone (`_GONE_MARKS`)."""
  import jax
  from jax.experimental import multihost_utils
  try:
    return multihost_utils.process_allgather(x)
  except (jax.errors.JaxRuntimeError, ValueError) as e:  # (a failed AllGather: ValueError)
    text = " ".join(str(e).split())
    if not any(mark in text for mark in _GONE_MARKS):
      raise
    raise ProcessGone(text[:300]) from None


def allgather_json(obj) -> list:
  """Every process's `obj` (JSON-serialisable), in process order, on every process (a collective:
  every process must call it; `ProcessGone` when another process is gone)."""
  import jax
  if jax.process_count() == 1:
    return [obj]
  import json

  import numpy as np
  data = np.frombuffer(json.dumps(obj).encode("utf-8"), np.uint8)
  sizes = np.asarray(multihost_allgather(np.asarray([data.size], np.int32)))
  padded = np.zeros(int(sizes.max()), np.uint8)
  padded[:data.size] = data
  every = np.asarray(multihost_allgather(padded))  # [processes, max size]
  return [json.loads(row[:int(n)].tobytes().decode("utf-8"))
          for row, n in zip(every, sizes.reshape(-1))]


def allgather_at(what: str, obj) -> list:
  """`allgather_json(obj)` at the step `what` of the program: RuntimeError when another process
  is at another step (a collective entered out of order: a bug), `ProcessGone` naming `what`
  when another process is gone."""
  try:
    every = allgather_json([what, obj])
  except ProcessGone as e:
    raise e.during(what) from None
  if any(w != what for w, _ in every):
    raise RuntimeError(f"processes out of step: {[w for w, _ in every]} (this process: {what})")
  return [o for _, o in every]


def describe_topology(mesh=None, per_process: bool = False) -> str:
  """'process 0/2, 8 devices (4 local, cpu), mesh data=8' for the start-up log line
  ('mesh data=4 per process' for a mesh of each process's own devices)."""
  import jax
  devices = jax.devices()
  line = (f"process {jax.process_index()}/{jax.process_count()}, {len(devices)} devices "
          f"({jax.local_device_count()} local, {devices[0].platform})")
  if mesh is not None:
    line += ", mesh " + " × ".join(f"{name}={size}" for name, size in mesh.shape.items())
    line += " per process" if per_process else ""
  return line


def log_topology(config: ml_collections.ConfigDict) -> str:
  """Logs process index/count, devices and the configured mesh; process 0 also prints the line."""
  import jax
  from sadm_jax.train import sharding
  # evaluate, predict: each process its own mesh over its devices (`evaluate.scoring.local_mesh`)
  per_process = config.get("stage") in ("evaluate", "predict")
  try:
    mesh = sharding.make_mesh(config, jax.local_devices() if per_process else None)
  except ValueError as e:  # the stage that needs the mesh raises it; here it is only reported
    logging.warning("%s", e)
    mesh = None
  line = describe_topology(mesh, per_process)
  logging.info("%s", line)
  if jax.process_index() == 0:
    print(line, flush=True)
  return line


def gpu_shortfall(environ: Mapping[str, str] | None = None) -> str | None:
  """One line naming the GPUs asked for and seen when JAX sees fewer local GPUs than this process
  was given (`GPUS_VAR`): launch/local_gpus.sh's NUM_GPUS (CUDA skips a GPU index the machine
  lacks) or, from launch/slurm.sbatch, the GPUs Slurm gave the task (most often a jaxlib without
  CUDA: JAX falls back to the CPU with a warning, and a cluster job would run on its CPUs); else
  None."""
  environ = os.environ if environ is None else environ
  wanted = _int(environ, GPUS_VAR, 0)
  if not wanted:
    return None
  import jax
  local = jax.local_devices()
  seen = sum(d.platform == "gpu" for d in local)
  if seen >= wanted:
    return None
  on = "" if seen else f", it runs on {local[0].platform}"
  visible = f"CUDA_VISIBLE_DEVICES={environ.get('CUDA_VISIBLE_DEVICES', '')}{on}"
  if environ.get(GPUS_FROM_VAR) == "slurm":
    return (f"Slurm gave this task {wanted} GPU(s) but JAX sees {seen} ({visible}): install JAX "
            f"with CUDA in the job's environment (pip install \"jax[cuda12]=={jax.__version__}\", "
            "README.md), or submit without GPUs")
  return (f"NUM_GPUS={wanted} but JAX sees {seen} local GPU(s) ({visible}): set NUM_GPUS (and "
          "CUDA_VISIBLE_DEVICES) to GPUs this machine has (nvidia-smi -L lists them)")
