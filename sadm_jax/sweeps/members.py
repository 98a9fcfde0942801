"""Sweep members: a config spec, `--config.k=v` overrides parsed by ml_collections' config flags, dependencies."""

from __future__ import annotations

import copy
import dataclasses
import importlib.util
import itertools
import os
import re
import sys
from typing import Any, Iterable, Mapping, Sequence

import ml_collections

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=+-]*$")  # no ',': --members=a,b lists names
# What the sweep itself keeps in its workdir (sweeps.slurm's job scripts, sweeps.report's files).
RESERVED_NAMES = ("slurm", "sweep_report.csv", "sweep_report.md")
OVERRIDE_RE = re.compile(r"^--config\.([\w.]+)=")  # a --config.k=v override; group 1: k
PLACEHOLDER_RE = re.compile(r"\{([A-Za-z_]\w*)\}")  # '{workdir}' (not a regex's 'a{3}')


@dataclasses.dataclass(frozen=True)
class Member:
  """One run of `sadm_jax.main`; `config` is a spec, or a ConfigDict (in-process runs only)."""
  name: str
  config: Any
  overrides: tuple[str, ...] = ()  # '--config.k=v'; '{workdir}' = the sweep's workdir
  after: tuple[str, ...] = ()  # members that must have finished first
  report: bool = True  # an evaluation whose report/ is a part of the sweep report

  def __post_init__(self):
    if not isinstance(self.name, str) or not NAME_RE.match(self.name):
      raise ValueError(f"member name {self.name!r} is invalid (letters, digits, ._=+-)")
    if self.name.lower() in RESERVED_NAMES:  # its workdir would be the sweep's own file or folder
      raise ValueError(f"member name {self.name!r} is the sweep's own (W/{self.name}): rename "
                       "the member")
    for field in ("overrides", "after"):
      value = getattr(self, field)
      if isinstance(value, str):
        raise ValueError(f"member {self.name}: {field} must be a list of strings, not one string")
      object.__setattr__(self, field, tuple(value))
    if not all(isinstance(a, str) for a in self.after):
      raise ValueError(f"member {self.name}: after must list member names, got {self.after!r}")
    bad = [o for o in self.overrides if not (isinstance(o, str) and OVERRIDE_RE.match(o))]
    if bad:
      raise ValueError(f"member {self.name}: {bad[0]!r} is not a --config.key=value override")
    keys = [OVERRIDE_RE.match(o).group(1) for o in self.overrides]
    twice = sorted({k for k in keys if keys.count(k) > 1})
    if twice:  # the last would win without a word (e.g. grid() axes over `overrides`)
      given = [o for o in self.overrides if OVERRIDE_RE.match(o).group(1) == twice[0]]
      raise ValueError(f"member {self.name}: --config.{twice[0]} is given {len(given)} times "
                       f"({', '.join(given)}); give it once")
    for o in self.overrides:  # '{work_dir}' or '{w}' would reach the member as it is
      other = [p for p in PLACEHOLDER_RE.findall(o) if p != "workdir"]
      if other:
        raise ValueError(f"member {self.name}: {o!r} has the placeholder {{{other[0]}}}; the "
                         "only one is {workdir} (the sweep's workdir)")
    if not isinstance(self.config, (str, ml_collections.ConfigDict)) or not self.config:
      raise ValueError(f"member {self.name}: config must be a 'configs/x.py[:arg]' spec")


def flag(key: str, value: Any) -> str:
  """The override string that sets `key` to `value` (tuples as Python literals)."""
  if isinstance(value, (tuple, list)):
    value = repr(tuple(value))
  elif isinstance(value, float):
    value = repr(value)
  return f"--config.{key}={value}"


def grid(axes: Mapping[str, Sequence[Any]], config: str, name: str = "{}",
         overrides: Sequence[str] = (), **fields) -> list[Member]:
  """Members for every combination of `axes` ({dotted.key: [values]}), named by `name` formatted
  with 'key=value' parts joined by '_' (key = the last part of the dotted key; not ',', which
  separates the names of --members)."""
  label = lambda v: "+".join(map(label, v)) if isinstance(v, (tuple, list)) else str(v)
  axes = dict(axes)
  for key, values in axes.items():  # a string would be iterated: '123' gives seeds 1, 2 and 3
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
      raise ValueError(f"grid axis {key}={values!r}: give a list of values, e.g. [{values!r}]")
    axes[key] = list(values)
    if not axes[key]:  # no combination at all: the grid would add no member, without a word
      raise ValueError(f"grid axis {key} has no values")
  out = []
  for values in itertools.product(*axes.values()):
    parts = "_".join(f"{k.rsplit('.', 1)[-1]}={label(v)}" for k, v in zip(axes, values))
    out.append(Member(name.format(parts), config,
                      tuple(overrides) + tuple(flag(k, v) for k, v in zip(axes, values)), **fields))
  return out


def ordered(members: Sequence[Member], done: Iterable[str] = ()) -> list[Member]:
  """`members` in dependency order (stable); dependencies outside the list must be in `done`."""
  names = [m.name for m in members]
  dups = sorted({n for n in names if names.count(n) > 1})
  if dups:
    raise ValueError(f"duplicate member names {dups}")
  done, out, placed = set(done), [], set()
  for m in members:
    missing = [d for d in m.after if d not in names and d not in done]
    if missing:
      raise ValueError(f"member {m.name} depends on {', '.join(missing)}: neither in the run nor "
                       "finished (no DONE)")
  pending = list(members)
  while pending:
    ready = [m for m in pending if all(d in placed or d not in names for d in m.after)]
    if not ready:
      raise ValueError(f"dependency cycle among {', '.join(m.name for m in pending)}")
    out.append(ready[0])
    placed.add(ready[0].name)
    pending.remove(ready[0])
  return out


@dataclasses.dataclass(frozen=True)
class Sweep:
  name: str
  path: str
  members: tuple[Member, ...]

  def select(self, names: Iterable[str]) -> list[Member]:
    names = [n for n in names if n]
    if not names:
      return list(self.members)
    unknown = [n for n in names if n not in {m.name for m in self.members}]
    if unknown:
      raise ValueError(f"unknown member(s) {', '.join(unknown)}; the sweep has "
                       f"{', '.join(m.name for m in self.members)}")
    return [m for m in self.members if m.name in names]


def repo_path(path: str) -> str:
  return path if os.path.isabs(path) else os.path.join(REPO, path)


def load_sweep(path: str) -> Sweep:
  """Reads a sweep file and checks its members (names, dependencies, spec files)."""
  if REPO not in sys.path:
    sys.path.insert(0, REPO)  # sweep and config files import `configs.*`
  # here, else (the shipped configs/sweeps/x.py from anywhere) under the repository root
  where = os.path.abspath(path if os.path.isfile(path) else repo_path(path))
  if not os.path.isfile(where):
    raise FileNotFoundError(f"{path}: no such file" + (
        "" if os.path.isabs(path) else f" (here or under the repository root {REPO})"))
  spec = importlib.util.spec_from_file_location(
      "_sadm_sweep_" + re.sub(r"\W", "_", os.path.basename(path)), where)
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
    get_sweep = getattr(module, "get_sweep", None)
    members = tuple(get_sweep()) if callable(get_sweep) else None
  except ValueError as e:  # the members' own checks (one line naming the member), or the file's
    raise ValueError(f"{path}: {' '.join(str(e).split())}") from None
  except Exception as e:  # noqa: BLE001  (SyntaxError, NameError, ... raised by the sweep file)
    text = " ".join(str(e).split())
    raise ValueError(f"{path}: cannot load the sweep file: {type(e).__name__}: {text}") from None
  if members is None:
    raise ValueError(f"{path}: the sweep file defines no get_sweep()")
  if not members:  # e.g. a filter that matched nothing: not a sweep that silently did nothing
    raise ValueError(f"{path}: get_sweep() returned no members: nothing to run")
  if not all(isinstance(m, Member) for m in members):
    raise ValueError(f"{path}: get_sweep() must return a list of sadm_jax.sweep.Member")
  try:
    ordered(members)
  except ValueError as e:
    raise ValueError(f"{path}: {e}") from None
  return Sweep(os.path.splitext(os.path.basename(path))[0], where, members)


def _spec(member: Member) -> str:
  path, sep, arg = member.config.partition(":")
  return repo_path(path) + sep + arg


def member_argv(member: Member, workdir: str, extra: Sequence[str] = ()) -> list[str]:
  """`sadm_jax.main`'s arguments for the member: --config, --workdir, overrides, then `extra`."""
  out = [f"--config={_spec(member)}"] if isinstance(member.config, str) else []
  out.append(f"--workdir={os.path.join(workdir, member.name)}")
  return out + [o.replace("{workdir}", workdir) for o in member.overrides] + list(extra)


def main_command(member: Member, workdir: str, extra: Sequence[str] = ()) -> list[str]:
  return [sys.executable, "-m", "sadm_jax.main", *member_argv(member, workdir, extra)]


def check_member_config(member: Member, config: ml_collections.ConfigDict) -> None:
  """The member's stage, choices and training values as `sadm_jax.main` checks them
  (`validate.check_values`; paths are checked when the member starts: earlier members make them);
  a ValueError naming the member. The member's own overrides that its stage never reads are
  printed as `warning: member <name>: ...` lines (`sadm_jax.ignored`); the sweep's extra
  arguments are not: they are meant for the members that read them."""
  from sadm_jax import config as config_lib
  from sadm_jax import ignored, validate
  try:
    validate.check_values(config, config_lib.STAGES)
  except validate.ConfigError as e:
    raise ValueError(f"member {member.name}: {e}") from None
  given = {m.group(1) for m in map(OVERRIDE_RE.match, member.overrides)}  # all match (Member)
  ignored.warn(config, given, prefix=f"member {member.name}: ")


def check_member_workdir(member: Member, workdir: str) -> None:
  """W/<member> is a directory or can be made one (`validate_paths.check_dir_path`): a file in
  its way is one line naming the member, not a traceback when the member starts."""
  from sadm_jax import validate_paths
  validate_paths.check_dir_path(os.path.join(workdir, member.name),
                                f"member {member.name}: --workdir")


def check_member_resume(member: Member, config: ml_collections.ConfigDict, workdir: str) -> None:
  """A training member whose run in W/<member> stopped (checkpoints, no DONE) resumes only with
  the keys it started with (`train.workdir.check_config`): refused before any member starts,
  not when it is reached, after the members before it."""
  from sadm_jax import validate, validate_paths
  mdir = os.path.join(workdir, member.name)
  if config.stage not in validate.TRAINING_STAGES or not validate_paths.holds_steps(mdir):
    return  # (nothing to resume: no JAX imported for it)
  from sadm_jax.train import workdir as workdir_lib
  try:
    workdir_lib.check_config(config, mdir)
  except ValueError as e:
    raise ValueError(f"member {member.name}: {e}") from None


# `sadm_jax.main`'s flags that a member refuses after --, and why (absl.app's and its help flags;
# absl.logging's, -v/--verbosity and the others, reach every member).
REFUSED_MAIN_FLAGS = {
    **dict.fromkeys(("help", "helpshort", "helpfull", "helpxml"),
                    "it prints the help instead of running the member (python -m sadm_jax.main "
                    "--helpfull shows it)"),
    **dict.fromkeys(("only_check_args", "only_check_flags"),
                    "it ends each member before it runs, and the sweep would mark it DONE"),
    **dict.fromkeys(("pdb", "pdb_post_mortem", "run_with_pdb"),
                    "a debugger's prompt cannot be answered in a member's log file"),
    **dict.fromkeys(("run_with_profiling", "profile_file", "use_cprofile_for_profiling"),
                    "it profiles one process: run the member alone with python -m sadm_jax.main"),
}


def _define_main_flags(fv) -> None:
  """Stand-ins in `fv` for absl.logging's flags of `sadm_jax.main` (parsed and checked as there,
  without changing this process's logging) and for the refused ones (`REFUSED_MAIN_FLAGS`)."""
  from absl import flags, logging  # (absl.logging defines its flags)
  for f in flags.FLAGS.flags_by_module_dict().get(logging.__name__, []):
    fv[f.name] = flags.Flag(f.parser, f.serializer, f.name, f.default, f.help, f.short_name,
                            f.boolean)
  for name in REFUSED_MAIN_FLAGS:
    fv[name] = (flags.Flag(flags.ArgumentParser(), None, name, None, "refused")
                if name == "profile_file" else  # (takes a value)
                flags.BooleanFlag(name, False, "refused",
                                  short_name="?" if name == "help" else None))


def main_flags(member: Member, workdir: str, extra: Sequence[str] = ()) -> dict[str, Any]:
  """The absl.logging flags (e.g. -v 1) among `extra`, {name: value}, for in-process members."""
  fv = _parsed(member, workdir, extra)
  from absl import flags
  return {f.name: fv[f.name].value
          for f in flags.FLAGS.flags_by_module_dict().get("absl.logging", []) if fv[f.name].present}


def member_config(member: Member, workdir: str, extra: Sequence[str] = ()
                  ) -> ml_collections.ConfigDict:
  """The config `sadm_jax.main` builds from the member's arguments (ml_collections' flags)."""
  return _parsed(member, workdir, extra).config


def _parsed(member: Member, workdir: str, extra: Sequence[str]):
  """The member's arguments parsed as `sadm_jax.main` parses them: absl FlagValues."""
  from absl import flags
  from ml_collections import config_flags

  from sadm_jax import config as config_lib
  if REPO not in sys.path:
    sys.path.insert(0, REPO)
  given = config_lib.flag_values(["sadm_jax.sweep", *extra], "workdir")
  if given:  # dropped below (and twice on `sadm_jax.main`'s command line): not what was meant
    raise ValueError(f"--workdir={given[0]} follows --: member m runs in W/m of the sweep's own "
                     "--workdir=W (before --); only --config overrides go after --")
  argv = ["sadm_jax.main"] + [a for a in member_argv(member, workdir, extra)
                              if not a.startswith("--workdir=")]
  fv = flags.FlagValues()
  _define_main_flags(fv)
  if isinstance(member.config, str):
    path = _spec(member).partition(":")[0]
    if not os.path.isfile(path):
      raise FileNotFoundError(f"member {member.name}: {member.config}: no such file" + (
          "" if os.path.isabs(member.config) else
          f" (a member's config spec is relative to the repository root {REPO})"))
    # ml_collections loads every config file as the module 'config_config' with the deprecated
    # `load_module`, which executes it inside the module already there: the previous member's
    # get_config() (and other names) would survive into a file that does not define its own.
    sys.modules.pop("config_config", None)
    config_flags.DEFINE_config_file("config", None, flag_values=fv, lock_config=True,
                                    sys_argv=argv)
  else:
    config_flags.DEFINE_config_dict("config", copy.deepcopy(member.config), flag_values=fv,
                                    lock_config=True, sys_argv=argv)
  try:  # the errors `python -m sadm_jax.main` would give, as the same one line
    rest = config_lib.parse_config_flags(fv, argv)
  except config_lib.ConfigFlagsError as e:
    raise ValueError(f"member {member.name}: {e}") from None
  if len(rest) > 1:
    raise ValueError(f"member {member.name}: not a --config.k=v override: {' '.join(rest[1:])}")
  refused = [n for n in REFUSED_MAIN_FLAGS if fv[n].present]
  if refused:
    raise ValueError(f"--{refused[0]} follows --, but a sweep cannot pass it to its members: "
                     f"{REFUSED_MAIN_FLAGS[refused[0]]}")
  return fv
