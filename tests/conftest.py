"""Test setup: 8 fake CPU devices and a persistent compilation cache, configured before JAX loads."""

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

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

from absl import flags  # noqa: E402

# grain's multi-worker mode reads absl flags; outside absl.app.run they must be marked parsed.
flags.FLAGS.mark_as_parsed()


# ---- session-wide tiny runs: one fake data dir, one tiny cDDPM and one tiny SADM-DRAEM run shared
# by tests/train and tests/evaluate (each is expensive to compile and train on 2 cores). Tests that
# change a run copy it first.

import pytest  # noqa: E402


from tests.helpers import with_data  # noqa: E402


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory) -> str:
  """Fake data: 8 IXI subjects (5 folds + test), 3 volumes per pathological val/test split."""
  from tests.data import fake_data
  root = str(tmp_path_factory.mktemp("tiny_data"))
  fake_data.write_data_dir(root, n_ixi=8, n_patho=3)
  return root


@pytest.fixture(scope="session")
def tiny_cddpm_dir(tiny_data_dir, tmp_path_factory) -> str:
  """A tiny cDDPM trained 2 steps (lr 2e-3, as test_cddpm_spark's runs: shared compilations)."""
  from configs import cddpm as cddpm_config
  from sadm_jax import main as main_lib
  workdir = str(tmp_path_factory.mktemp("tiny_cddpm"))
  c = with_data(cddpm_config.get_config("tiny"), tiny_data_dir)
  c.train.num_steps = c.train.eval_every = c.train.checkpoint_every = 2
  c.optimizer.learning_rate = 2e-3
  main_lib.run_stage(c, workdir)
  return workdir


@pytest.fixture(scope="session")
def tiny_sadm_run(tiny_data_dir, tiny_cddpm_dir, tmp_path_factory) -> tuple[str, dict]:
  """(workdir, result) of a tiny SADM-DRAEM run on the tiny cDDPM, 2 steps."""
  from configs import sadm_draem
  from sadm_jax import main as main_lib
  workdir = str(tmp_path_factory.mktemp("tiny_sadm"))
  c = with_data(sadm_draem.get_config("tiny"), tiny_data_dir)
  c.sadm.cddpm_workdir = tiny_cddpm_dir
  c.train.num_steps = c.train.eval_every = c.train.checkpoint_every = 2
  return workdir, main_lib.run_stage(c, workdir)


@pytest.fixture(scope="session")
def tiny_sadm_dir(tiny_sadm_run) -> str:
  return tiny_sadm_run[0]


# ---- end-to-end CLI jobs started in the background when the session begins (only when a collected
# test needs them): the in-process tests keep ~1.4 of the 2 cores busy, these jobs use the rest.
# fixture name -> `python -m sadm_jax.main` arguments (the workdir is added).
# They run one after the other in this order (the reproduction reuses the demo's compiled programs).
BACKGROUND_RUNS = {
    "demo_tiny_run": ["--config=configs/demo.py:tiny", "--config.train.async_checkpoints=False"],
    "tiny_reproduction_run": ["--config=configs/reproduce.py:tiny",
                              "--config.train.async_checkpoints=False"],
}
_background: dict = {}


def _background_run(name: str, after=None):
  """The background run of fixture `name`, started (or queued after `after`) on first use."""
  from tests.helpers import BackgroundRun
  if name not in _background:
    _background[name] = BackgroundRun(BACKGROUND_RUNS[name], after=after)
  return _background[name]


def pytest_collection_finish(session):
  """Starts the background runs the collected tests need (none for --collect-only)."""
  if session.config.option.collectonly:
    return
  wanted = {n for item in session.items for n in getattr(item, "fixturenames", ())}
  previous = None
  for name in BACKGROUND_RUNS:
    if name in wanted:
      previous = _background_run(name, after=previous)


def pytest_sessionfinish(session, exitstatus):
  """Cancels every queued run first (killing one must not start the next), then stops them."""
  for run in _background.values():
    run.cancel()
  for run in _background.values():
    run.stop()


@pytest.fixture(scope="session")
def tiny_reproduction_run():
  """(workdir, output) of `configs/reproduce.py:tiny` run by the CLI (started with the session)."""
  run = _background_run("tiny_reproduction_run")
  return run.wait(), run.output()


@pytest.fixture(scope="session")
def demo_tiny_run():
  """(workdir, output) of `configs/demo.py:tiny` run by the CLI (started with the session)."""
  run = _background_run("demo_tiny_run")
  return run.wait(), run.output()
