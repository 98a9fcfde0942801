"""Config helpers: resolve faithful placeholders, and the adapters from a ConfigDict to the data layer's plain arguments."""

from __future__ import annotations

import ml_collections

# (section path, field) -> (value when faithful, value otherwise)
FAITHFUL_DEFAULTS = {
    ("data", "clean_splits"): (False, True),
    ("data", "slice_sampling"): ("uniform", "brain"),
    ("data", "augment_3d"): (True, False),
    ("diffusion", "shared_noise"): (True, False),
    ("diffusion", "aligned_octaves"): (True, False),
    ("diffusion", "float16_noise"): (True, False),
    ("sadm", "frozen_train_mode"): (True, False),
    ("anomaly", "faithful_uint8_wrap"): (True, False),
    ("evaluate", "threshold_method"): ("bisection", "exact"),
    ("evaluate", "faithful_metrics"): (True, False),
}


def resolve(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Returns a copy whose faithful placeholders (None) are filled from `config.faithful`."""
  c = ml_collections.ConfigDict(config.to_dict())
  for (section, field), (faithful_value, default_value) in FAITHFUL_DEFAULTS.items():
    node = c
    for part in section.split("."):
      node = node[part]
    if node.get(field) is None:
      node[field] = faithful_value if c.faithful else default_value
  return c


def preprocess_config(config: ml_collections.ConfigDict):
  """The data layer's PreprocessConfig from `config.data.preprocess`."""
  from sadm_jax.data.preprocess import PreprocessConfig
  p = config.data.preprocess
  return PreprocessConfig(curvature_flow=bool(p.curvature_flow), cf_time_step=float(p.cf_time_step),
                          cf_iterations=int(p.cf_iterations),
                          crop_size=tuple(int(v) for v in p.crop_size),
                          percentiles=tuple(float(v) for v in p.percentiles),
                          downsample=int(p.downsample))


def cache_dir(config: ml_collections.ConfigDict) -> str:
  import os
  return config.data.cache_dir or os.path.join(os.path.abspath(config.data.data_dir), ".sadm_cache")


def load_valid_splits(config: ml_collections.ConfigDict, names=None):
  """`data.prepare.load_valid_splits` with `config.data`'s settings (names default: `data.splits`).

  Rows already in the preprocessing cache (same files: path, size, mtime) are not re-validated.
  """
  from sadm_jax.data import cache as cache_lib, prepare
  config = resolve(config)
  d = config.data
  cache = cache_lib.VolumeCache(cache_dir(config), preprocess_config(config))
  return prepare.load_valid_splits(d.data_dir, list(names or d.splits or ()) or None,
                                   modality=d.modality, clean=bool(d.clean_splits),
                                   num_workers=int(d.num_workers),
                                   skip_invalid=bool(d.skip_invalid), validated=cache.contains)


def run_prepare(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """`stage=prepare`: validates, preprocesses and caches every split (`data.prepare.prepare`)."""
  from sadm_jax.data import prepare
  config = resolve(config)
  d = config.data
  return prepare.prepare(d.data_dir, workdir, preprocess_config(config), cache_dir(config),
                         list(d.splits) or None, modality=d.modality, clean=bool(d.clean_splits),
                         num_workers=int(d.num_workers), skip_invalid=bool(d.skip_invalid))
