"""Config helpers: parse `--config`/`--config.k=v` flags into one-line errors, resolve faithful placeholders, and the adapters from a ConfigDict to the data layer's plain arguments."""

from __future__ import annotations

from typing import Any, Iterator

import ml_collections

# stage name -> "module:function(config, workdir)"; modules are imported only when used.
STAGES = {
    "prepare": "sadm_jax.config:run_prepare",
    "demo": "sadm_jax.demo_job:run",
    "spark": "sadm_jax.train.spark:run_spark",
    "cddpm": "sadm_jax.train.cddpm:run_cddpm",
    "sadm": "sadm_jax.train.sadm:run_sadm",
    "describe": "sadm_jax.describe:run",
    "aot": "sadm_jax.train.aot:run",
    "evaluate": "sadm_jax.evaluate.run:run",
    "predict": "sadm_jax.evaluate.predict:run",
    "reproduce": "sadm_jax.reproduce:run",
}

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


class ConfigFlagsError(ValueError):
  """A `--config=` file or `--config.k=v` override that cannot be used; the message is one line."""


class ConfigError(ValueError):
  """A config value that cannot work; the message is one line naming the key and the value
  (`sadm_jax.validate`, `sadm_jax.validate_paths`)."""


def one_line(message: str) -> str:
  """A flag-parsing or config-file error as one line (an embedded traceback reduced to its last
  line)."""
  text = str(message).strip()
  if text[:1] in "'\"" and text[-1:] == text[:1]:  # a KeyError's repr inside an AttributeError
    import ast
    try:
      text = str(ast.literal_eval(text))
    except (ValueError, SyntaxError):
      pass
  if "Traceback (most recent call last)" in text:
    head, _, tb = text.partition("Traceback (most recent call last)")
    last = [l.strip() for l in tb.splitlines() if l.strip()][-1]
    text = f"{head.strip()} {last}"
  return " ".join(l.strip() for l in text.splitlines() if l.strip())


def _config_arg(argv) -> str:
  return next((a for a in argv[1:] if a.startswith("--config=")), "--config")


def flag_values(argv, name: str) -> list[str]:
  """The values of every `--<name>=<value>` / `--<name> <value>` in `argv` (before a lone '--'):
  absl keeps only the last of a flag given twice, so the callers refuse more than one."""
  args = list(argv[1:])
  if "--" in args:
    args = args[:args.index("--")]
  values = []
  for i, a in enumerate(args):
    if a.startswith(f"--{name}="):
      values.append(a.split("=", 1)[1])
    elif a == f"--{name}":
      values.append(args[i + 1] if i + 1 < len(args) else "")
  return values


def parse_config_flags(fv, argv):
  """`fv(argv)` (absl FlagValues holding ml_collections' `config` flag); returns the remaining
  arguments. Every error (unknown config key, bad type, a config file that does not load or does
  not build a config with a `stage`) is raised as one ConfigFlagsError line naming the flag or
  file. `python -m sadm_jax.main` and the sweep members (`sweeps.members.member_config`) use it."""
  def fail(message):
    raise ConfigFlagsError(message)
  files = flag_values(argv, "config")
  if len(files) > 1:  # absl kept the last, or named a --config.k=v override "defined twice"
    fail(f"--config is given {len(files)} times ({', '.join(files)}); give one config file")
  if files and files[0].endswith(":"):  # e.g. `:$SIZE` with SIZE unset: the full-size config
    fail(f"--config={files[0]} has nothing after ':'; give the argument (e.g. "
         f"{files[0]}tiny) or drop the ':' for the full-size config")
  try:
    rest = fv(argv)
    if fv["config"].present:
      config = fv.config
      if not isinstance(config, ml_collections.ConfigDict):
        getattr(config, "stage", None)  # a file that failed to load raises its error here
        fail(f"{_config_arg(argv)}: get_config() returned {type(config).__name__}, not the "
             "ml_collections.ConfigDict of configs/default.py's get_config()")
      if "stage" not in config:
        fail(f"{_config_arg(argv)}: the config has no 'stage'; build it on configs/default.py's "
             "get_config()")
    _none_or_empty_tuples(fv, argv, fail)
    return rest
  except ConfigFlagsError:
    raise
  except Exception as e:  # noqa: BLE001  (flags.Error, and whatever the config file raises)
    raise ConfigFlagsError(_flags_error_line(e, argv)) from None


def _none_or_empty_tuples(fv, argv, fail) -> None:
  """ml_collections reads a tuple field's `--config.k=None` as (None,) and `--config.k=` as ('',):
  None is the field's None where its default is None (`placeholder(tuple)`, e.g.
  sadm.weak_train_rows), else refused, as is an empty value; one line naming the setting."""
  from absl import flags
  for name in list(fv):
    flag = fv[name]
    if not (name.startswith("config.") and isinstance(flag, flags.MultiFlag) and flag.present):
      continue  # (a tuple field's override: ml_collections' _ConfigFieldMultiFlag)
    given = [v.strip() for v in flag_values(argv, name)]
    can_be_none = flag.default is None
    example = f"e.g. --{name}='(a, b)'" + (", or None (unset)" if can_be_none else "")
    if "" in given:
      fail(f"--{name}= is empty: give a tuple, {example}")
    if "None" in given:
      if not can_be_none:
        fail(f"--{name}=None: {name[len('config.'):]} is a tuple (default "
             f"{tuple(flag.default)!r}) that cannot be None; give a tuple, {example}")
      if len(given) > 1:
        fail(f"--{name}=None is given with other values ({', '.join(given)}); give None alone")
      parent, _, key = name[len("config."):].rpartition(".")
      node = fv.config
      for part in filter(None, parent.split(".")):
        node = node[part]
      node[key] = None  # (not the 1-tuple (None,))


def _flags_error_line(e: Exception, argv) -> str:
  from absl import flags
  if "get_config() takes 0 positional arguments but 1 was given" in str(e):  # default.py:tiny
    spec = (flag_values(argv, "config") or [""])[0]
    return (f"--config={spec}: this config file takes no ':' argument; give "
            f"--config={spec.rsplit(':', 1)[0]} (its get_config() has no parameter)")
  if isinstance(e, flags.Error):
    return one_line(str(e))
  if not isinstance(e, (AttributeError, KeyError, TypeError, ValueError, OSError)):
    # SyntaxError, NameError, ImportError, ... raised by the config file
    return (f"{_config_arg(argv)}: cannot load the config file: {type(e).__name__}: "
            f"{one_line(str(e))}")
  msg = one_line(str(e))
  if isinstance(e, OSError) and ("Failed loading config file" in msg
                                 or "earlier failure to load" in msg):
    last = [l.strip() for l in str(e.__cause__ or e).splitlines() if l.strip()][-1]
    return f"{_config_arg(argv)}: cannot load the config file: {last}"
  if isinstance(e, AttributeError) and "has no attribute 'get_config'" in msg:
    return f"{_config_arg(argv)}: the config file defines no get_config()"
  if not isinstance(e, (AttributeError, KeyError)):
    return msg
  # ml_collections: an override of a key the config does not have ("did you mean" kept).
  if "Attempting to lookup: " in msg:  # a key below a value: `--config.seed.x`
    path = msg.rsplit("Attempting to lookup: ", 1)[1].strip().rstrip(".")
    arg = next((a.split("=")[0] for a in argv[1:] if a.split("=")[0] == f"--config.{path}"), None)
    if arg:
      return f"{arg}: no such config key ({msg.split('. Attempting')[0]})"
  key = msg.split()[0].strip("'\"") if msg else ""
  arg = next((a.split("=")[0] for a in argv[1:]
              if a.startswith("--config.") and key in a.split("=")[0].split(".")), None)
  hint = msg.replace("' Did you", "'. Did you")
  return f"{arg or 'a --config override'}: no such config key {hint}"


def at(config, dotted: str) -> Any:
  """The field or section of `config` (a ConfigDict or dict) at a dotted key: 'data.preprocess'."""
  for part in dotted.split("."):
    config = config[part]
  return config


def leaves(config: ml_collections.ConfigDict, prefix: str = "") -> Iterator[tuple[str, Any]]:
  """('section.key', value) of every field of `config`, sections walked depth first."""
  for key, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      yield from leaves(value, f"{prefix}{key}.")
    else:
      yield f"{prefix}{key}", value


def resolve(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Returns a copy whose faithful placeholders (None) are filled from `config.faithful`."""
  c = ml_collections.ConfigDict(config.to_dict())
  for (section, field), (faithful_value, default_value) in FAITHFUL_DEFAULTS.items():
    node = at(c, section)
    if node.get(field) is None:
      node[field] = faithful_value if c.faithful else default_value
  return c


def saved_value(config: ml_collections.ConfigDict, section: str, field: str, absent=None):
  """`section.field` of a run's saved config (kept as the user gave it) as the run resolved it: a
  faithful placeholder (None) is filled from the config's own `faithful`, as `resolve` did at
  training; `absent` when the field is missing (a run older than the field)."""
  node = at(config, section)
  if field not in node:
    return absent
  value = node[field]
  if value is None and (section, field) in FAITHFUL_DEFAULTS:
    faithful_value, default_value = FAITHFUL_DEFAULTS[(section, field)]
    return faithful_value if config.get("faithful") else default_value
  return value


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
