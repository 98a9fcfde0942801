"""Small helpers shared by test modules and fixtures (no fixtures here: see conftest.py)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading

from benchmarks.weights import random_variables  # noqa: F401  (re-exported for tests)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def with_data(c, data_dir: str):
  """`c` reading the fake data under `data_dir` (its own cache), synchronous checkpoints."""
  c.data.data_dir = data_dir
  c.data.cache_dir = os.path.join(data_dir, "cache")
  c.train.async_checkpoints = False
  return c


def tiny_cddpm_args(data_dir: str, steps: int, checkpoint_every: int) -> list[str]:
  """`python -m sadm_jax.main` arguments (no workdir) of the tiny cDDPM runs tests kill, resume and
  compare: `data_dir`, validation every 4 steps, lr 2e-3 (the session's tiny train-step program).
  Runs made with them differ only in resumable keys (num_steps, checkpoint_every)."""
  return ["--config=configs/cddpm.py:tiny", f"--config.data.data_dir={data_dir}",
          f"--config.data.cache_dir={data_dir}/cache", f"--config.train.num_steps={steps}",
          f"--config.train.checkpoint_every={checkpoint_every}", "--config.train.eval_every=4",
          "--config.optimizer.learning_rate=0.002"]


def metric_series(workdir: str, key: str = "train/loss") -> list[tuple[int, float]]:
  """[(step, value)] of `key` (e.g. 'train/loss', 'val/loss') in a run's metrics.jsonl."""
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [(r["step"], r[key]) for r in map(json.loads, f) if key in r]


def saved_state(workdir: str, which: str = "latest", step: int | None = None) -> tuple[int, dict]:
  """(step, the whole train state as saved: step, params, model_state, opt_state) of a step of a
  run's `checkpoints/` ('latest') or `best/` ('best'); default its newest."""
  from sadm_jax.train.checkpoint import Checkpointer
  with Checkpointer(workdir, create=False) as ckpt:
    step = ckpt.saved_step(which) if step is None else step
    return step, ckpt.restore_saved(which, step, keys=("step", "params", "model_state",
                                                       "opt_state"))


def assert_same_run(got_dir: str, want_dir: str, last_step: int, best: bool = True) -> None:
  """`got_dir` holds the run of `want_dir`: the same metrics.jsonl, and the same train state
  (parameters, model state, optimiser state) bit for bit at checkpoint `last_step` and, with
  `best`, in best/ (the same step)."""
  import jax
  import numpy as np
  texts = []
  for d in (got_dir, want_dir):
    with open(os.path.join(d, "metrics.jsonl"), encoding="utf-8") as f:
      texts.append(f.read())
  assert texts[0] == texts[1]
  for which, step in (("latest", last_step),) + ((("best", None),) if best else ()):
    got_step, got = saved_state(got_dir, which, step)
    want_step, want = saved_state(want_dir, which, step)
    assert got_step == want_step, which
    assert jax.tree.structure(got) == jax.tree.structure(want), which
    jax.tree.map(np.testing.assert_array_equal, got, want)


def largest_constant(hlo_text: str) -> int:
  """Elements (4-byte) of the largest array baked into a lowered program's text as a constant
  (it prints as dense<"0x…">, 8 hex digits per float32); 0 when there is none."""
  import re
  return max((len(m) for m in re.findall(r'dense<"0x([0-9A-Fa-f]*)"', hlo_text)), default=0) // 8


def dilated_convs(module, params, x) -> int:
  """Convolutions over a stride-2-dilated operand (lhs dilation) in the lowered program of the
  gradient of sum(module(x)²) with respect to params and x (a transposed conv's plain kernel
  gradient is one; its forward another)."""
  import jax
  import jax.numpy as jnp
  grad = jax.jit(jax.grad(lambda p, x: jnp.sum(jnp.square(module.apply(p, x))), argnums=(0, 1)))
  return grad.lower(params, x).as_text().count("lhs_dilate = [2, 2]")


def param_count(tree) -> int:
  """Number of values in a variable tree (or its abstract shapes)."""
  import math

  import jax
  return sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(tree))


def abstract_variables(module, *args):
  """Variable shapes of `module.init(key, *args)` without computing anything (eval_shape)."""
  import jax
  return jax.eval_shape(lambda key: module.init(key, *args), jax.random.key(0))


def on_device(value, dtype):
  """`value` (a numpy array or scalar) as a jax array of `dtype`: cast by numpy on the host, then
  put on the default device. `jnp.asarray(value, dtype)` gives the same values, but compiles a
  one-op program (a dtype conversion or a copy) for every new shape."""
  import jax
  import numpy as np
  return jax.device_put(np.asarray(value, dtype))


# Test data is drawn with numpy, and a module's real `init` is compiled as one program at the
# package's CPU init options: an eager jax.random draw compiles once per shape, and on an AMD
# EPYC Zen 3 some small 4-D ones took 11-24 s at XLA's default optimisation level (a 3×3×8×12
# kernel; 0.3-0.4 s at level 2, same values: BENCHMARKS.md, "random draws that compile for
# seconds", and `python -m benchmarks.random_draw_compile`).
def normal_data(seed: int, shape, scale: float = 1.0):
  """float32 N(0, scale²) array of `shape` drawn with numpy (no compilation)."""
  import numpy as np
  return on_device(scale * np.random.default_rng(seed).standard_normal(shape), np.float32)


def uniform_data(seed: int, shape):
  """float32 U[0, 1) array of `shape` drawn with numpy (no compilation)."""
  import numpy as np
  return on_device(np.random.default_rng(seed).random(shape), np.float32)


def compiled_init(module, key, *args, **kwargs):
  """`module.init(key, *args, **kwargs)` as one jitted program, compiled with the options the
  package's init programs use on this backend (`train.loop.init_compiler_options`): the same
  values as the eager init, without compiling each random draw alone at XLA's default level."""
  import functools

  import jax

  from sadm_jax.train import loop
  init = functools.partial(module.init, **kwargs)
  return jax.jit(init, compiler_options=loop.init_compiler_options(jax.default_backend()))(
      key, *args)


def compiled_apply(module, static_argnums=(), **kwargs):
  """`functools.partial(module.apply, **kwargs)` as one jitted program (its positional arguments
  at `static_argnums`, e.g. a `train` flag, static): a forward pass compiled once, instead of each
  of its operations at each new shape, one program apiece, when `module.apply` runs eagerly.
  Calls of the returned function with the same shapes (and static values) run the same program,
  so their results compare exactly."""
  import functools

  import jax
  return jax.jit(functools.partial(module.apply, **kwargs), static_argnums=static_argnums)


def he_random_variables(module, *args, seed: int = 0):
  """Cheap stand-in for a ResNet-style `init` (whose RNG kernels take long to compile on CPU):
  kernels N(0, 2/fan_in), BatchNorm scales and variances U(0.5, 1.5) (nonzero, so every residual
  branch and its drop path matters), every other leaf N(0, 0.1²); drawn with numpy."""
  import math

  import numpy as np
  from flax import traverse_util
  rng = np.random.default_rng(seed)
  flat = traverse_util.flatten_dict(abstract_variables(module, *args))
  out = {}
  for path, leaf in flat.items():
    name, shape = path[-1], leaf.shape
    if name == "kernel":
      value = rng.standard_normal(shape, np.float32) * math.sqrt(2.0 / math.prod(shape[:-1]))
    elif name in ("scale", "var"):
      value = rng.uniform(0.5, 1.5, size=shape)
    else:  # bias, mean, mask tokens
      value = rng.normal(size=shape) * 0.1
    out[path] = on_device(value, leaf.dtype)
  return traverse_util.unflatten_dict(out)


BACKGROUND_NICENESS = 10


def _lower_priority(pid: int) -> None:
  """Runs `pid` (and the workers it starts: they inherit it) at a low CPU priority, so that the
  in-process tests, the session's critical path, run as if alone and it takes the idle core time.

  It counts because the run stays in pytest's Unix session (in a process group of its own):
  where Linux schedules sessions as groups (autogroup), a run in a session of its own gets a
  core's share whatever its niceness.
  """
  os.setpriority(os.PRIO_PROCESS, pid, BACKGROUND_NICENESS)


def background_command(args: list[str]) -> tuple[str, list[str]]:
  """(module, arguments) of a background run's ARGS: `python -m sadm_jax.main ARGS`, or, when
  ARGS start with "-m", "<module>", that module with the rest (a test's job, e.g.
  tests/train/resume_jobs.py)."""
  if args[:1] == ["-m"]:
    return args[1], list(args[2:])
  return "sadm_jax.main", list(args)


class BackgroundRun:
  """`python -m sadm_jax.main ARGS --workdir=W` in a new temporary W, started now or after `after`
  (or another module's job, `background_command`).

  The test session starts its longest end-to-end jobs this way when it begins (tests/conftest.py),
  so that they use the share of the 2 cores that the in-process tests leave idle; one after the
  other, so that the second reads the programs the first compiled from the compilation cache.
  The child gets the session's environment as it is now (8 fake devices, the compilation cache,
  the compile log) and runs in its own process group, so that `stop` ends its workers too.
  """

  def __init__(self, args: list[str], after: "BackgroundRun | None" = None):
    self.root = tempfile.mkdtemp(prefix="sadm_test_bg_")
    self.workdir = os.path.join(self.root, "run")
    self.log_path = os.path.join(self.root, "output.log")
    self.args = list(args)
    self.proc: subprocess.Popen | None = None
    self.error: BaseException | None = None  # why the process could not be started
    self._env = {**os.environ, "PYTHONUNBUFFERED": "1",
                 # the compile log's "test" field: this run, not the test running meanwhile
                 "PYTEST_CURRENT_TEST": f"background {' '.join(self.args)} (run)"}
    self._lock = threading.Lock()
    self._started = threading.Event()  # set once the process started, or never will
    self._cancelled = False
    if after is None:
      self._start()
    else:
      threading.Thread(target=lambda: (after._wait_exit(), self._start()), daemon=True).start()

  def _start(self) -> None:
    try:
      with self._lock:
        if not self._cancelled:
          with open(self.log_path, "w") as log:
            module, args = background_command(self.args)
            self.proc = subprocess.Popen(
                [sys.executable, "-m", module, *args, f"--workdir={self.workdir}"],
                cwd=REPO, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=self._env, process_group=0)
            _lower_priority(self.proc.pid)
    except BaseException as e:  # noqa: BLE001 — reported by wait()
      self.error = e
    finally:
      self._started.set()

  def _wait_exit(self) -> None:
    self._started.wait()
    if self.proc is not None:
      self.proc.wait()

  def wait(self, timeout: float = 1800.0) -> str:
    """The run's workdir once it has exited 0; its output's tail in the failure otherwise."""
    what = f"background run {' '.join(self.args)}"
    if not self._started.wait(timeout):
      raise AssertionError(f"{what} did not start within {timeout:.0f} s")
    if self.proc is None:
      raise AssertionError(f"{what} never started: {self.error or 'cancelled'}")
    rc = self.proc.wait(timeout=timeout)
    if rc != 0:
      raise AssertionError(f"{what} exited with {rc}:\n{self.output()[-4000:]}")
    return self.workdir

  def output(self) -> str:
    """Everything the run printed so far (stdout and stderr)."""
    with open(self.log_path, errors="replace") as f:
      return f.read()

  def cancel(self) -> None:
    """A run that has not started yet never will."""
    with self._lock:
      self._cancelled = True
    self._started.set()

  def stop(self) -> None:
    """Cancels the run if it has not started, kills its process group if it is going, and
    removes its directory."""
    self.cancel()
    if self.proc is not None and self.proc.poll() is None:
      os.killpg(self.proc.pid, signal.SIGKILL)  # the spawn workers of cohort/prepare too
      self.proc.wait()
    shutil.rmtree(self.root, ignore_errors=True)
