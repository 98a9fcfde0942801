"""The main job on the embedded demo cohort: build the cohort if missing, then prepare (and later train/evaluate) it."""

from __future__ import annotations

import logging
import os
import time

import ml_collections

from sadm_jax.data import demo, prepare


def demo_config(config: ml_collections.ConfigDict):
  """The generator's DemoConfig for `config.demo` (size 'default' or 'tiny', seed)."""
  if config.demo.size == "default":
    return demo.DemoConfig.default(seed=config.demo.seed)
  if config.demo.size == "tiny":
    return demo.DemoConfig.tiny(seed=config.demo.seed)
  raise ValueError(f"unknown demo.size {config.demo.size!r}; expected 'default' or 'tiny'")


def build_cohort(config: ml_collections.ConfigDict, workdir: str) -> str:
  """Generates the demo cohort (skipped when complete with the same config); returns DATA_DIR."""
  root = config.demo.root or os.path.join(workdir, "demo_data")
  start = time.time()
  summary = demo.generate_demo_cohort(root, demo_config(config))
  montage = os.path.join(workdir, "demo_montage.png")
  if not os.path.exists(montage):
    demo.write_montage(root, montage)
  logging.info("demo cohort at %s (%.1f s): %s", root, time.time() - start, summary)
  print(f"demo cohort: {root} ({time.time() - start:.1f} s); montage: {montage}")
  return root


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Builds the demo cohort and prepares (validates, preprocesses, caches) every split.

  Stage I/II training and evaluation are added to this job as they land (see README).
  """
  os.makedirs(workdir, exist_ok=True)
  data_dir = build_cohort(config, workdir)
  with config.unlocked():
    config.data.data_dir = data_dir
  return {"prepare": prepare.run(config, workdir)}
