"""Settings a run would not read: one `warning:` line per `--config.k=v` its stage and modes ignore.

A setting the user types on the command line (or a sweep member's override) but the run never
reads is almost always a mistake: `--config.sadm.weak_train_rows=...` with the default DRAEM mode,
`--config.evaluate.lam=0.3` with the 'sum' combination. Such a run still starts (a sweep may set
a value for some members only); the warning says which setting is ignored and why. Values a config
file sets are not warned about: one file serves several stages (configs/demo.py).
"""

from __future__ import annotations

import sys
from typing import Callable, Iterable, NamedTuple

import ml_collections

from sadm_jax import config as config_lib

_ANOMALY = ("anomaly.p_anomalous", "anomaly.restrict_to_brain", "anomaly.faithful_uint8_wrap")
_WEAK_ROWS = ("sadm.weak_train_rows", "sadm.weak_val_rows")


class Rule(NamedTuple):
  stages: tuple[str, ...]  # the stages the rule is about
  keys: tuple[str, ...]  # the settings it may find ignored
  why: Callable[[ml_collections.ConfigDict], str]  # '' = read; else why they are not


def _draem_mode(c) -> str:
  return ("sadm.mode='draem' trains on IXI with synthetic anomalies; only the weak-supervision "
          "modes 'brats' and 'atlas' read the rows" if c.sadm.mode == "draem" else "")


def _weak_mode(c) -> str:
  return (f"sadm.mode={c.sadm.mode!r} trains on annotated lesions; only sadm.mode='draem' "
          "synthesises anomalies" if c.sadm.mode != "draem" else "")


def _no_cddpm(c) -> str:
  return ("sadm.use_cddpm=False trains a plain UNet on the input, with no cDDPM"
          if not c.sadm.use_cddpm else "")


def _input_only(c) -> str:
  return ("sadm.use_residual=False: the SegUnet sees the input only and the cDDPM never runs"
          if c.sadm.use_cddpm and not c.sadm.use_residual else "")


def _not_weighted(c) -> str:
  return (f"evaluate.combination={c.evaluate.combination!r}; only 'weighted' reads λ"
          if c.evaluate.combination != "weighted" else "")


def _evaluate_anomalies(c) -> str:
  return ("the DRAEM test set always draws one anomaly per slice inside the brain "
          "(only anomaly.faithful_uint8_wrap applies to it)")


def _no_draem_set(c) -> str:
  return ("evaluate.test_sets has no 'DRAEM' set, the only one with synthetic anomalies"
          if "DRAEM" not in c.evaluate.test_sets else "")


def _spark(c) -> str:
  return "stage spark pretrains the encoder from scratch; stage cddpm reads this setting"


def _demo_sets(c) -> str:
  return (f"stage {c.stage} sets it for each of its runs (data: its synthetic cohort, "
          "demo.root; steps and learning rates: demo.<stage>_steps, demo.<stage>_learning_rate)")


# Settings the demo and the reproduction give each of their runs (demo_job.stage_config,
# reproduce.members), whatever the command line says.
_DEMO_SET = ("data.data_dir", "train.num_steps", "train.num_epochs", "optimizer.learning_rate",
             "sadm.mode", "sadm.cddpm_workdir", "evaluate.cddpm_workdir", "evaluate.sadm_workdirs")

RULES = (
    Rule(("demo", "reproduce"), _DEMO_SET, _demo_sets),
    Rule(("sadm",), _WEAK_ROWS, _draem_mode),
    Rule(("sadm",), _ANOMALY, _weak_mode),
    Rule(("sadm",), ("sadm.cddpm_workdir", "sadm.use_residual", "sadm.frozen_train_mode"),
         _no_cddpm),
    Rule(("sadm",), ("sadm.frozen_train_mode",), _input_only),
    Rule(("evaluate",), ("evaluate.lam",), _not_weighted),
    Rule(("evaluate",), _ANOMALY[:2], _evaluate_anomalies),
    Rule(("evaluate",), _ANOMALY[2:], _no_draem_set),
    Rule(("spark",), ("model.encoder.pretrained_workdir",), _spark),
)


def ignored(config: ml_collections.ConfigDict, given: Iterable[str]) -> list[str]:
  """One message per key of `given` (dotted config keys the user set) that `config`'s stage and
  modes do not read: "--config.<key>=<value> has no effect: <why>"."""
  given = set(given)
  out = []
  for rule in RULES:
    keys = [k for k in rule.keys if k in given]
    if config.stage not in rule.stages or not keys:
      continue
    why = rule.why(config)
    if why:
      out += [f"--config.{k}={config_lib.at(config, k)!r} has no effect: {why}" for k in keys]
  return out


def warn(config: ml_collections.ConfigDict, given: Iterable[str], prefix: str = "") -> list[str]:
  """Prints `ignored`'s messages as `warning: <prefix><message>` lines on stderr; returns them."""
  messages = ignored(config, given)
  for m in messages:
    print(f"warning: {prefix}{m}", file=sys.stderr, flush=True)
  return messages
