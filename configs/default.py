"""Base configuration: defines every field once; stage and experiment configs only override it.

Per-item faithful flags are typed placeholders: `None` means "follow `config.faithful`"
(resolved by `sadm_jax.config.resolve`), an explicit True/False wins.
"""

import ml_collections
from ml_collections import config_dict


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.stage = "prepare"  # prepare | demo | describe (+ training stages as they land)
  c.seed = 3141
  c.faithful = False  # reproduce the reference's behaviour for every item marked F in METHOD.md §5

  # ---- data (METHOD §2) ----
  d = c.data = ml_collections.ConfigDict()
  d.data_dir = ""  # DATA_DIR of the authors' preprocessed data (with or without the Data/ level)
  d.cache_dir = ""  # preprocessed-volume cache; "" = <data_dir>/.sadm_cache
  d.modality = "t1"
  d.splits = ()  # splits for `prepare`; () = every known split found under data_dir
  d.skip_invalid = False  # log and skip invalid rows instead of failing
  d.clean_splits = config_dict.placeholder(bool)  # de-dup + disjoint splits (Q17); faithful: keep
  d.num_workers = 2  # processes for validation/preprocessing
  d.fold = 0
  d.slice_sampling = config_dict.placeholder(str)  # 'brain' (default) | 'uniform' (faithful, Q29)
  d.augment = True  # intensity augmentation (METHOD §2.4)
  d.augment_3d = config_dict.placeholder(bool)  # augment the volume before slicing (faithful, Q28)
  d.loader_workers = 0  # grain worker processes
  d.val_slices_per_volume = 8  # deterministic validation slices per volume (Q26)
  p = d.preprocess = ml_collections.ConfigDict()
  p.curvature_flow = True  # SimpleITK CurvatureFlow equivalent on intensity images (Q22)
  p.cf_time_step = 0.125
  p.cf_iterations = 3
  p.crop_size = (192, 192, 100)
  p.percentiles = (1.0, 99.0)
  p.downsample = 2

  # ---- embedded demo cohort ----
  m = c.demo = ml_collections.ConfigDict()
  m.root = ""  # "" = <workdir>/demo_data
  m.seed = 0
  m.size = "default"  # 'default' | 'tiny'
  return c
