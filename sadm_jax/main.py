"""Command-line entry point: `python -m sadm_jax.main --config=configs/<x>.py --workdir=<dir>`."""

from __future__ import annotations

import importlib
import sys

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Path to a config file (optionally `file.py:arg`).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for outputs, checkpoints and logs.")
flags.mark_flags_as_required(["config", "workdir"])

# stage name -> "module:function(config, workdir)"; modules are imported only when used.
STAGES = {
    "prepare": "sadm_jax.data.prepare:run",
    "demo": "sadm_jax.demo_job:run",
    "spark": "sadm_jax.train.spark:run_spark",
    "cddpm": "sadm_jax.train.cddpm:run_cddpm",
    "sadm": "sadm_jax.train.sadm:run_sadm",
    "describe": "sadm_jax.describe:run",
    "aot": "sadm_jax.train.aot:run",
    "evaluate": "sadm_jax.evaluate.run:run",
    "predict": "sadm_jax.evaluate.predict:run",
}


def run_stage(config, workdir: str):
  """Dispatches `config.stage` to its runner."""
  if config.stage not in STAGES:
    raise app.UsageError(f"unknown stage {config.stage!r}; expected one of {', '.join(STAGES)}")
  module, fn = STAGES[config.stage].split(":")
  return getattr(importlib.import_module(module), fn)(config, workdir)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  from sadm_jax import distributed
  distributed.maybe_initialize(FLAGS.config)  # before anything touches a JAX backend
  from sadm_jax.data.errors import DataError
  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # library INFO chatter (Orbax) off unless -v is given
  logging.info("stage %s, workdir %s", FLAGS.config.stage, FLAGS.workdir)
  distributed.log_topology(FLAGS.config)
  try:
    run_stage(FLAGS.config, FLAGS.workdir)
  except DataError as e:
    logging.error("%s", e)
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  app.run(main)
