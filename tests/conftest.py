"""Test setup: 8 fake CPU devices and a persistent compilation cache, configured before JAX loads."""

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# The train steps' heap reuse (sadm_jax.utils.host_heap) makes big CPU programs impossible to
# store in the persistent compilation cache, which this suite's processes share (the tiny cDDPM
# step alone has 334 MB of temporaries): off here and in the subprocesses; its own tests
# (tests/utils/test_host_heap.py, the Trainer's in tests/train/test_loop.py) turn it on.
os.environ.setdefault("SADM_CPU_HEAP_REUSE", "0")

from sadm_jax.utils import xla_flags  # noqa: E402  (imports no JAX)

xla_flags.apply()  # the package's XLA:CPU defaults, as `python -m sadm_jax.main` runs with them

_CACHE = os.environ.get("SADM_TEST_JAX_CACHE",
                        os.path.join(os.path.dirname(os.path.dirname(__file__)), ".jax_cache"))

# Subprocesses (CLI, loopback multi-process tests) inherit the same persistent cache.
os.environ["JAX_COMPILATION_CACHE_DIR"] = _CACHE
os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"

import jax  # noqa: E402  (must come after XLA_FLAGS)

jax.config.update("jax_compilation_cache_dir", _CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)

from sadm_jax.utils import compile_log  # noqa: E402

compile_log.install()  # SADM_COMPILE_LOG=<file>: every compilation's time (subprocesses too)

from sadm_jax.utils import gc_tuning  # noqa: E402

gc_tuning.apply()  # the garbage-collector settings `python -m sadm_jax.main` runs with

from absl import flags  # noqa: E402

# grain's multi-worker mode reads absl flags; outside absl.app.run they must be marked parsed.
flags.FLAGS.mark_as_parsed()


# ---- session-wide runs, made by the CLI (`python -m sadm_jax.main`, the README's command) in the
# background from the start of the session, one after the other in this order, at a low priority
# (tests/helpers.BackgroundRun): the in-process tests run as if alone, these runs take the share
# of the 2 cores they leave idle, and later runs read the programs earlier ones compiled from the
# compilation cache. Each starts only when a collected test needs it (or a later run does); the
# tests that read a run go last, in the order the runs finish. One fake data dir, one tiny cDDPM,
# one tiny SADM-DRAEM on it and one evaluation of both are shared by tests/train and
# tests/evaluate (tests that change a run copy it first); an 8-step cDDPM and a SparK pretraining
# on the same data serve tests/train; the demo and the Table-1 reproduction run end to end; two
# resume tests' CLI runs go last (tests/train/resume_jobs.py).

import pytest  # noqa: E402

from tests.helpers import tiny_cddpm_args  # noqa: E402

_TINY_DATA = ["--config.data.data_dir={data}", "--config.data.cache_dir={data}/cache"]
_TWO_STEPS = ["--config.train.num_steps=2", "--config.train.eval_every=2",
              "--config.train.checkpoint_every=2", "--config.train.async_checkpoints=False"]
# run name -> `python -m sadm_jax.main` arguments (the workdir is added): "{data}" is the session's
# fake data dir, "{<run>}" the workdir of an earlier run.
BACKGROUND_RUNS = {
    # lr 2e-3, as test_cddpm_spark's runs and the demo's tiny cDDPM: shared compilations
    "tiny_cddpm": ["--config=configs/cddpm.py:tiny", *_TINY_DATA, *_TWO_STEPS,
                   "--config.optimizer.learning_rate=0.002"],
    "tiny_sadm": ["--config=configs/sadm_draem.py:tiny", *_TINY_DATA, *_TWO_STEPS,
                  "--config.sadm.cddpm_workdir={tiny_cddpm}"],
    # threshold + cDDPM + SADM on every fake data set (configs/evaluate.py:tiny)
    "tiny_evaluation": ["--config=configs/evaluate.py:tiny", *_TINY_DATA,
                        "--config.evaluate.cddpm_workdir={tiny_cddpm}",
                        "--config.evaluate.sadm_workdirs=('{tiny_sadm}',)"],
    # 8 steps, validation and checkpoints at 4 and 8: the SIGKILL test's reference
    # (tests/train/test_cddpm_spark.py) and the run tests/train/test_workdir.py resumes copies of
    "cddpm_8": [*tiny_cddpm_args("{data}", 8, 4), "--config.train.async_checkpoints=False"],
    # tests/train/test_cddpm_spark.py: SparK pretraining in mixed precision (bf16 compute), and
    # the reference a run stopped and resumed there must equal
    "tiny_spark": ["--config=configs/spark_pretrain.py:tiny", *_TINY_DATA,
                   "--config.train.num_steps=4", "--config.train.eval_every=2",
                   "--config.train.checkpoint_every=4", "--config.train.async_checkpoints=False",
                   "--config.model.dtype=bfloat16"],
    "demo_tiny_run": ["--config=configs/demo.py:tiny", "--config.train.async_checkpoints=False"],
    # on the demo run's cohort (the same cohort: its generation and preprocessing are skipped)
    "tiny_reproduction_run": ["--config=configs/reproduce.py:tiny",
                              "--config.train.async_checkpoints=False",
                              "--config.demo.root={demo_tiny_run}/demo_data"],
    # Jobs of two resume tests (tests/train/resume_jobs.py): the CLI runs they interrupt or damage
    # and resume take their ≈ 60 s here, not on the in-process tests' path, and run last, when the
    # core the runs above use would otherwise be idle. The tiny cDDPM program of "tiny_cddpm".
    "killed_and_resumed": ["-m", "tests.train.resume_jobs", "sigkill", "--data={data}"],
    "damaged_and_resumed": ["-m", "tests.train.resume_jobs", "damaged", "--data={data}",
                            "--reference={cddpm_8}"],
}
# A run's arguments name only earlier runs (they start one after the other).
assert all(f"{{{later}}}" not in a for i, name in enumerate(BACKGROUND_RUNS)
           for later in list(BACKGROUND_RUNS)[i:] for a in BACKGROUND_RUNS[name])
# fixture -> the run it reads (a test's fixture names include those its fixtures use)
RUN_OF_FIXTURE = {"tiny_cddpm_dir": "tiny_cddpm", "tiny_sadm_dir": "tiny_sadm",
                  "evaluation": "tiny_evaluation", "cddpm_8_dir": "cddpm_8",
                  "tiny_spark_dir": "tiny_spark", "demo_tiny_run": "demo_tiny_run",
                  "tiny_reproduction_run": "tiny_reproduction_run",
                  "killed_and_resumed": "killed_and_resumed",
                  "damaged_and_resumed": "damaged_and_resumed"}
_background: dict = {}
_data_dir: list = []  # the session's fake data dir, once written


def _tiny_data() -> str:
  """The session's fake data: 8 IXI subjects (5 folds + test), 3 volumes per pathological
  val/test split (written on first use; removed when the session ends)."""
  if not _data_dir:
    import tempfile
    from tests.data import fake_data
    root = tempfile.mkdtemp(prefix="sadm_test_data_")
    _data_dir.append(root)  # removed at session end even if writing is interrupted
    fake_data.write_data_dir(root, n_ixi=8, n_patho=3)
  return _data_dir[0]


def needed_runs(names) -> list[str]:
  """The runs `names` read and every earlier run their arguments name, in BACKGROUND_RUNS order."""
  need = set(names)
  for name in reversed(list(BACKGROUND_RUNS)):
    if name in need:
      need |= {n for n in BACKGROUND_RUNS if any(f"{{{n}}}" in a for a in BACKGROUND_RUNS[name])}
  return [n for n in BACKGROUND_RUNS if n in need]


def _start(names) -> None:
  """Starts (queues) the runs `names` need that have not started, one after the other."""
  from tests.helpers import BackgroundRun
  previous = next(reversed(_background.values()), None)
  for name in needed_runs(names):
    if name in _background:
      continue
    args = BACKGROUND_RUNS[name]
    fields = {n: _background[n].workdir for n in _background}
    if any("{data}" in a for a in args):
      fields["data"] = _tiny_data()
    previous = _background[name] = BackgroundRun([a.format(**fields) for a in args],
                                                 after=previous)


def _run(name: str) -> str:
  """The workdir of background run `name` once it has finished (started now if it was not)."""
  _start([name])
  return _background[name].wait()


def _last_run(item) -> int:
  """Position in BACKGROUND_RUNS of the latest run `item` reads; -1 when it reads none."""
  order = list(BACKGROUND_RUNS)
  return max((order.index(RUN_OF_FIXTURE[f]) for f in getattr(item, "fixturenames", ())
              if f in RUN_OF_FIXTURE), default=-1)


def pytest_collection_modifyitems(session, config, items):
  """Tests that read a background run go last, in the order the runs finish (otherwise in their
  own order): by then the run has finished. (A module whose tests are split this way sets its
  module-scoped fixtures up twice; they are cheap.)"""
  items.sort(key=_last_run)  # stable: the order within each group stays


def pytest_collection_finish(session):
  """Starts the background runs the collected tests need (none for --collect-only)."""
  if session.config.option.collectonly:
    return
  wanted = {n for item in session.items for n in getattr(item, "fixturenames", ())}
  _start([RUN_OF_FIXTURE[f] for f in RUN_OF_FIXTURE if f in wanted])


def pytest_sessionfinish(session, exitstatus):
  """Cancels every queued run first (killing one must not start the next), then stops them."""
  import shutil
  for run in _background.values():
    run.cancel()
  for run in _background.values():
    run.stop()
  for root in _data_dir:
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def python_sigint():
  """Python's own Ctrl-C handler for the test: a process started in the background by a
  non-interactive shell (`nohup .ci/run &`) inherits SIGINT ignored, and Python then installs
  none, so a SIGINT sent to this process would do nothing."""
  import signal
  old = signal.signal(signal.SIGINT, signal.default_int_handler)
  yield
  signal.signal(signal.SIGINT, old)


@pytest.fixture(scope="session")
def tiny_data_dir() -> str:
  return _tiny_data()


@pytest.fixture(scope="session")
def tiny_cddpm_dir(tiny_data_dir) -> str:
  """A tiny cDDPM trained 2 steps on the session's data (lr 2e-3)."""
  return _run("tiny_cddpm")


@pytest.fixture(scope="session")
def tiny_sadm_dir(tiny_data_dir, tiny_cddpm_dir) -> str:
  """A tiny SADM-DRAEM run on the tiny cDDPM, 2 steps."""
  return _run("tiny_sadm")


@pytest.fixture(scope="session")
def evaluation(tiny_data_dir, tiny_cddpm_dir, tiny_sadm_dir) -> tuple[str, dict]:
  """(workdir, summary) of one full evaluation: threshold + cDDPM + SADM on every fake data set;
  the summary is the one the stage returned (its `eval/summary.json`)."""
  import json
  import os
  workdir = _run("tiny_evaluation")
  with open(os.path.join(workdir, "eval", "summary.json"), encoding="utf-8") as f:
    return workdir, json.load(f)


@pytest.fixture(scope="session")
def cddpm_8_dir(tiny_data_dir) -> str:
  """A tiny cDDPM trained 8 steps on the session's data (validation and checkpoints at 4 and 8,
  lr 2e-3: the session's tiny train-step program)."""
  return _run("cddpm_8")


@pytest.fixture(scope="session")
def tiny_spark_dir(tiny_data_dir) -> str:
  """A tiny SparK pretraining run, 4 steps in mixed precision (bf16 compute, f32 parameters)."""
  return _run("tiny_spark")


@pytest.fixture(scope="session")
def tiny_reproduction_run():
  """(workdir, output) of `configs/reproduce.py:tiny` run by the CLI (started with the session)."""
  name = "tiny_reproduction_run"
  return _run(name), _background[name].output()


@pytest.fixture(scope="session")
def demo_tiny_run():
  """(workdir, output) of `configs/demo.py:tiny` run by the CLI (started with the session)."""
  name = "demo_tiny_run"
  return _run(name), _background[name].output()


@pytest.fixture(scope="session")
def killed_and_resumed() -> tuple[str, dict]:
  """(workdir, outcome) of the tiny cDDPM SIGKILLed at step 5 of 16 and run again for 8 steps
  (tests/train/resume_jobs.py `sigkill`; the run is workdir/run)."""
  from tests.train import resume_jobs
  workdir = _run("killed_and_resumed")
  return workdir, resume_jobs.read_outcome(workdir)


@pytest.fixture(scope="session")
def damaged_and_resumed() -> tuple[str, dict]:
  """(workdir, outcome) of a copy of the 8-step run with a truncated array in step 8, run again
  (tests/train/resume_jobs.py `damaged`; the run is workdir/run)."""
  from tests.train import resume_jobs
  workdir = _run("damaged_and_resumed")
  return workdir, resume_jobs.read_outcome(workdir)


@pytest.fixture(scope="session")
def cli_data_dir(tmp_path_factory) -> str:
  """Fake data (6 IXI subjects, 1 volume per pathological split) for the command-line error tests
  alone (tests/test_cli_errors.py, tests/test_cli_errors_environment.py), written once for both:
  they pass it to runs that must stop before reading it, and check that no cache is made in it."""
  from tests.data import fake_data
  root = str(tmp_path_factory.mktemp("dd"))
  fake_data.write_data_dir(root, n_ixi=6, n_patho=1)
  return root
