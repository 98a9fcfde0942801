"""Command-line entry point: `python -m sadm_jax.main --config=configs/<x>.py --workdir=<dir>`."""

from __future__ import annotations

import errno
import importlib
import os
import sys
from typing import Callable

from absl import app, flags, logging
from ml_collections import config_flags

from sadm_jax import config as config_lib
from sadm_jax.utils import signals

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Path to a config file (optionally `file.py:arg`).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for outputs, checkpoints and logs.")
flags.mark_flags_as_required(["config", "workdir"])

STAGES = config_lib.STAGES  # stage name -> "module:function(config, workdir)"


INTERRUPTED = 130  # exit code after Ctrl-C: 128 + SIGINT, the shell's convention
# OSErrors of a write the machine refused (not a bug): one line and exit code 2 from run_checked.
WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)


def run_stage(config, workdir: str):
  """Dispatches `config.stage` to its runner."""
  if config.stage not in STAGES:
    raise app.UsageError(f"unknown stage {config.stage!r}; expected one of {', '.join(STAGES)}")
  module, fn = STAGES[config.stage].split(":")
  return getattr(importlib.import_module(module), fn)(config, workdir)


_one_line = config_lib.one_line


def _fail(message: str, code: int = 2):
  print(f"error: {message}", file=sys.stderr, flush=True)
  sys.exit(code)


def parse_flags(argv):
  """absl's flag parsing, with each error (unknown config key, bad type, bad config file) as one
  line on stderr and exit code 2 instead of a traceback (`config.parse_config_flags`)."""
  workdirs = config_lib.flag_values(argv, "workdir")
  if len(workdirs) > 1:  # absl would keep the last one without a word
    _fail(f"--workdir is given {len(workdirs)} times ({', '.join(workdirs)}); give one")
  try:
    return config_lib.parse_config_flags(FLAGS, argv)
  except config_lib.ConfigFlagsError as e:
    _fail(str(e))


def run_checked(config, workdir: str, tune_gc: bool = False, report_interrupt: bool = True,
                start: Callable[[], None] | None = None, several: bool | None = None) -> int:
  """Validates `config` and runs its stage; a user error (bad config value, bad data, a workdir
  that is not this run's) is printed once as one `error: ...` line and gives exit code 2.

  Ctrl-C prints one line and gives 130; with `report_interrupt=False` the KeyboardInterrupt
  propagates unprinted, for a caller that reports it in its own words (a sweep, the
  reproduction's in-process members), so that the user sees one line, not one per level.

  tune_gc: once the config is valid, import the stage's module (JAX, Flax, ...) and then set the
  garbage collector for tracing (`utils.gc_tuning`: those import-time objects frozen out of its
  passes, a higher generation-0 threshold), as `python -m sadm_jax.main` does.

  start: what comes first (`main`: `jax.distributed`, the backend); several: whether several
  processes run (else `jax.process_count() > 1`). With several, a SIGTERM from `start` up to the
  start-up checks' agreement waits for it, which then stops every process (`signals.held`).
  """
  try:
    return _run_checked(config, workdir, tune_gc, start, several)
  except KeyboardInterrupt as e:  # Ctrl-C, SIGTERM (`main`): checkpoints, cache entries and
    if not report_interrupt:  # results are written whole
      raise
    print(f"error: stage {config.stage} interrupted ({signals.signal_name(e)}); {workdir} keeps "
          "only complete files: run the same command again to resume", file=sys.stderr, flush=True)
    return signals.TERMINATED if isinstance(e, signals.Terminated) else INTERRUPTED


def _run_checked(config, workdir: str, tune_gc: bool, start, several: bool | None) -> int:
  from sadm_jax import agreements
  problem, interrupt = None, None
  if several is None:
    import jax
    several = jax.process_count() > 1
  # Several processes: a SIGTERM on one host (a TPU VM's maintenance, a `kill`) before or in the
  # agreement below is told to every process there; raised at once, it stopped that process
  # alone, and the others waited in the agreement until JAX's timeout crashed them.
  with signals.held(several):
    if start is not None:
      start()
    try:  # the imports take a second or more: a SIGTERM may come in them
      from sadm_jax import validate
      from sadm_jax.train import loop  # noqa: F401  (NonFiniteLossError below)
      validate.validate(config, workdir, STAGES)
    except ValueError as e:
      problem = str(e)
    except KeyboardInterrupt as e:  # Ctrl-C (and SIGTERM with one process): every process
      interrupt = e  # stops with it (`agree`), not only this one
    try:
      agreements.agree(problem, interrupt)  # several processes: all stop when any failed its
    except ValueError as e:  # checks or got a SIGTERM
      return _user_error(config, e)
  from sadm_jax.train.loop import NonFiniteLossError
  try:
    if tune_gc and config.stage in STAGES:
      from sadm_jax.utils import gc_tuning
      importlib.import_module(STAGES[config.stage].split(":")[0])
      gc_tuning.apply()
    run_stage(config, workdir)
  except (ValueError, NonFiniteLossError) as e:  # ConfigError, DataError, RunError,
    # WorkdirError, the stages' own, and a NaN/Inf training loss (its last good step is kept)
    return _user_error(config, e)
  except OSError as e:  # the machine refused a write: a full disk, a quota, a read-only mount
    if e.errno not in WRITE_ERRNOS:
      raise
    print(f"error: {f'{e.filename}: ' if e.filename else ''}{e.strerror} (stage {config.stage}; "
          "files are written whole: run the same command again once it can write)",
          file=sys.stderr, flush=True)
    return 2
  return 0


def _user_error(config, e: Exception) -> int:
  """Prints a user error's one line; its exit code."""
  if FLAGS["verbosity"].present:
    logging.exception("stage %s failed", config.stage)
  print(f"error: {e}", file=sys.stderr, flush=True)
  return 2


def main(argv):
  if len(argv) > 1:
    _fail(f"unexpected arguments: {' '.join(argv[1:])} (every option is --config=, --workdir= or "
          "--config.<key>=<value>)")
  from sadm_jax import distributed, validate
  try:  # a malformed SLURM_*/JAX_*/SADM_DISTRIBUTED variable
    planned = distributed.plan(FLAGS.config)
  except ValueError as e:
    _fail(str(e))
  several = planned.source is not None
  given = None  # the --config.k=v overrides, once the config passed the static checks
  try:  # wrong values, choices and paths: refused before JAX, Orbax and grain are imported
    validate.check_static(FLAGS.config, STAGES, FLAGS.workdir)
  except ValueError as e:
    if not several:
      _fail(str(e))
    # Several processes: this one goes on to join the others; `run_checked` repeats the checks
    # and then stops every process together (`agreements.agree`).
  else:
    from ml_collections import config_flags
    given = config_flags.get_override_values(FLAGS["config"])
  from sadm_jax.utils import compilation_cache, compile_log, xla_flags
  bad_flags = xla_flags.flags_problem()  # XLA would abort in C++ on it when the backend starts
  if bad_flags:
    _fail(bad_flags)
  # XLA:CPU defaults the user has not set (read when the backend starts); evaluate: one CPU
  # device per core. The persistent compilation cache (SADM_COMPILATION_CACHE=0 turns it off).
  # SADM_COMPILE_LOG=<file>: log every compilation's time (benchmarks/compile_profile.py).
  xla_flags.apply(stage=str(FLAGS.config.stage))
  bad_cache = compilation_cache.problem(compilation_cache.apply())
  if bad_cache:
    _fail(bad_cache)
  try:
    compile_log.install()
  except OSError as e:
    _fail(f"{compile_log.ENV}={os.environ.get(compile_log.ENV)}: cannot write the compile log "
          f"({e.strerror})")
  with signals.terminate_as_interrupt():  # a scheduler's stop (Slurm's preemption, time limit)
    code = run_checked(FLAGS.config, FLAGS.workdir, tune_gc=True, several=several,
                       start=lambda: _start(planned, given))  # unwinds like Ctrl-C
  if code:
    exit_now(code)
  sys.exit(code)


def _start(planned, given) -> None:
  """`main`'s steps from `jax.distributed` to the stage's checks: the backend, its log line, the
  GPUs asked for, the --config.k=v no stage reads, the watch on a sweep's pid."""
  from sadm_jax import distributed
  try:
    distributed.initialize(planned)  # before anything touches a JAX backend
  except distributed.NotConnected as e:  # JAX's connecting thread still waits: no teardown
    print(f"error: {e}", file=sys.stderr, flush=True)
    exit_now(2)
  except ValueError as e:
    _fail(str(e))
  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # library INFO chatter (Orbax) off unless -v is given
  logging.info("stage %s, workdir %s", FLAGS.config.stage, FLAGS.workdir)
  try:  # the first use of a JAX backend
    distributed.log_topology(FLAGS.config)
  except RuntimeError as e:  # e.g. JAX_PLATFORMS=gpu where no GPU backend can start
    platforms = os.environ.get("JAX_PLATFORMS")
    _fail(f"{f'JAX_PLATFORMS={platforms}: ' if platforms else ''}no JAX backend: "
          f"{_one_line(str(e))}")
  try:  # launch/local_gpus.sh: NUM_GPUS above the GPUs here (or a malformed SADM_NUM_GPUS)
    short = distributed.gpu_shortfall()
  except ValueError as e:
    short = str(e)
  if short:
    _fail(short)
  import jax
  if given is not None and jax.process_index() == 0:  # once, not once per process
    from sadm_jax import ignored  # a --config.k=v this stage and its modes never read
    ignored.warn(FLAGS.config, given)
  signals.stop_with_parent()  # a sweep's member: stops (SIGTERM) once its sweep is gone


def exit_now(code: int) -> None:
  """Ends a stage that failed or was interrupted (its one line printed) without the
  interpreter's teardown. A computation the stage had dispatched may still be running on XLA's
  threads (the next evaluation batch, the next train step); tearing the runtime down under it
  ended the process in a segfault (exit -11 instead of 130 after Ctrl-C in an evaluation). What
  the stage wrote is complete by then: files are renamed into place, checkpoint saves were
  waited for while the error unwound. With several processes it first leaves the job with the
  others (`distributed.leave`, up to 30 s); a Ctrl-C or SIGTERM meanwhile ends it at once, with
  the same code (Python's Ctrl-C raised a KeyboardInterrupt there: a traceback)."""
  from sadm_jax import distributed
  logging.flush()
  sys.stdout.flush()
  sys.stderr.flush()
  signals.on_stop(lambda: os._exit(code))
  distributed.leave()
  os._exit(code)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
