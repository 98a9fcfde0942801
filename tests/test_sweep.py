"""Sweeps: members and their `--config.k=v` overrides, and the sweeps shipped in configs/sweeps/."""

import json
import os

import ml_collections
import pytest

from sadm_jax.sweeps import members as members_lib
from sadm_jax.sweeps.members import Member, flag, grid, member_config, ordered
from tests.helpers import REPO
from tests.sweep_common import CDDPM, TINY, write_sweep


# ----------------------------------------------------------------------------- members


def test_members_are_checked_when_built():
  with pytest.raises(ValueError, match="member name 'a/b' is invalid"):
    Member("a/b", CDDPM)
  for name in ("slurm", "sweep_report.md"):  # the sweep's own job-script folder and report
    with pytest.raises(ValueError, match=rf"^member name '{name}' is the sweep's own"):
      Member(name, CDDPM)
  with pytest.raises(ValueError, match="'seed=3' is not a --config.key=value override"):
    Member("a", CDDPM, ["seed=3"])
  with pytest.raises(ValueError, match="overrides must be a list of strings"):
    Member("a", CDDPM, "--config.seed=3")
  with pytest.raises(ValueError, match=r"^member a: '--config.sadm.cddpm_workdir=\{work_dir\}/c' "
                                       r"has the placeholder \{work_dir\}; the only one is "
                                       r"\{workdir\} \(the sweep's workdir\)$"):
    Member("a", CDDPM, ["--config.sadm.cddpm_workdir={work_dir}/c"])  # was: reached the member
  Member("a", CDDPM, ["--config.sadm.cddpm_workdir={workdir}/c",
                      "--config.mesh.fsdp_rules=(('kernel{2}', 'fsdp'),)"])
  with pytest.raises(ValueError, match=r"^member a: --config.seed is given 2 times "
                                       r"\(--config.seed=1, --config.seed=3\); give it once$"):
    Member("a", CDDPM, ["--config.seed=1", "--config.seed=3"])  # was: seed 3, without a word
  with pytest.raises(ValueError, match=r"^member seed=2: --config.seed is given 2 times"):
    grid({"seed": [2]}, CDDPM, overrides=["--config.seed=1"])
  m = Member("a", CDDPM, ["--config.seed=3"], after=["b"])
  assert m.overrides == ("--config.seed=3",) and m.after == ("b",)


def test_flag_writes_values_as_the_config_flags_read_them():
  assert flag("evaluate.sadm_workdirs", ["/w/a", "/w/b"]) == \
      "--config.evaluate.sadm_workdirs=('/w/a', '/w/b')"
  assert flag("diffusion.ensemble_timesteps", (249,)) == \
      "--config.diffusion.ensemble_timesteps=(249,)"
  assert flag("optimizer.learning_rate", 3e-4) == "--config.optimizer.learning_rate=0.0003"
  assert flag("sadm.use_cddpm", False) == "--config.sadm.use_cddpm=False"
  assert flag("data.data_dir", "/d x") == "--config.data.data_dir=/d x"


def test_grid_names_members_by_their_values():
  ms = grid({"optimizer.learning_rate": [1e-3, 1e-4], "sadm.use_residual": [True]}, CDDPM,
            name="lr_{}", overrides=["--config.seed=1"], after=("cddpm",))
  assert [m.name for m in ms] == ["lr_learning_rate=0.001_use_residual=True",
                                  "lr_learning_rate=0.0001_use_residual=True"]
  assert ms[1].overrides == ("--config.seed=1", "--config.optimizer.learning_rate=0.0001",
                             "--config.sadm.use_residual=True")
  assert ms[1].after == ("cddpm",)


def test_grid_refuses_an_axis_that_is_not_a_list_of_values():
  """A string axis was iterated: {'seed': '123'} made seeds 1, 2 and 3, 'adamw' five members
  named by its letters (refused as 'duplicate member names'); an empty axis added no member."""
  with pytest.raises(ValueError, match=r"^grid axis seed='123': give a list of values, e\.g\. "
                                       r"\['123'\]$"):
    grid({"seed": "123"}, CDDPM)
  with pytest.raises(ValueError, match=r"^grid axis optimizer.name='adamw': give a list"):
    grid({"optimizer.name": "adamw"}, CDDPM)
  with pytest.raises(ValueError, match=r"^grid axis seed=3: give a list"):
    grid({"seed": 3}, CDDPM)
  with pytest.raises(ValueError, match=r"^grid axis seed has no values$"):
    grid({"seed": []}, CDDPM)
  assert [m.name for m in grid({"seed": range(2)}, CDDPM)] == ["seed=0", "seed=1"]


def test_ordered_follows_dependencies_stably_and_rejects_bad_graphs():
  a, b, c = Member("a", CDDPM, after=["c"]), Member("b", CDDPM), Member("c", CDDPM)
  assert [m.name for m in ordered([a, b, c])] == ["b", "c", "a"]
  with pytest.raises(ValueError, match=r"duplicate member names \['b'\]"):
    ordered([b, b])
  with pytest.raises(ValueError, match="member a depends on c: neither in the run nor finished"):
    ordered([a, b])
  assert [m.name for m in ordered([a, b], done={"c"})] == ["a", "b"]
  with pytest.raises(ValueError, match="dependency cycle among a, c"):
    ordered([a, Member("c", CDDPM, after=["a"])])


def test_member_config_is_what_main_builds_from_the_same_arguments():
  m = Member("m", CDDPM, [
      flag("diffusion.ensemble_timesteps", (249,)), "--config.sadm.use_residual=False",
      "--config.evaluate.sadm_workdirs=('{workdir}/a', '{workdir}/b')", "--config.data.fold=3",
      "--config.evaluate.combination=weighted", "--config.optimizer.learning_rate=3e-4",
      "--config.sadm.weak_train_rows=(1, 4)", "--config.seed=1"])
  c = member_config(m, "/w", ["--config.data.data_dir=/d x", "--config.seed=9"])
  assert c.diffusion.ensemble_timesteps == (249,) and c.sadm.use_residual is False
  assert c.evaluate.sadm_workdirs == ("/w/a", "/w/b") and c.data.fold == 3
  assert c.optimizer.learning_rate == 3e-4 and c.sadm.weak_train_rows == (1, 4)
  assert c.data.data_dir == "/d x" and c.seed == 9  # extra overrides come last and win
  assert c.train.batch_size == 8  # the ':tiny' argument of the spec was applied
  assert members_lib.main_command(m, "/w")[1:5] == [
      "-m", "sadm_jax.main", f"--config={REPO}/configs/cddpm.py:tiny", "--workdir=/w/m"]


def test_member_config_errors_are_one_line_and_name_the_member(tmp_path):
  with pytest.raises(ValueError) as e:
    member_config(Member("a", CDDPM, ["--config.optimizer.learning_rat=1.0"]), "/w")
  assert str(e.value) == ("member a: --config.optimizer.learning_rat: no such config key "
                          "'learning_rat'. Did you mean \"learning_rate\" instead of "
                          "\"learning_rat\"?")
  with pytest.raises(ValueError, match="member a: .*Non-boolean argument"):
    member_config(Member("a", CDDPM, ["--config.sadm.use_cddpm=maybe"]), "/w")
  with pytest.raises(FileNotFoundError, match="member a: configs/not_yet.py: no such file"):
    member_config(Member("a", "configs/not_yet.py"), "/w")
  # The config file's own errors: the line `python -m sadm_jax.main` prints, no traceback.
  for i, (source, expected) in enumerate([
      ("def get_config(:\n", "cannot load the config file: SyntaxError: "),
      ("import no_such_module_x\n", "cannot load the config file: ModuleNotFoundError: "),
      ("x = 1\n", "the config file defines no get_config()"),
      ("def get_config():\n  return 3\n", "get_config() returned int, not the "),
  ]):
    bad = tmp_path / f"bad{i}.py"
    bad.write_text(source)
    with pytest.raises(ValueError) as e:
      member_config(Member("a", str(bad)), "/w")
    assert str(e.value).startswith(f"member a: --config={bad}: {expected}"), str(e.value)
    assert "\n" not in str(e.value) and "Traceback" not in str(e.value)
  with pytest.raises(ValueError) as e:
    member_config(Member("a", "configs/cddpm.py:huge"), "/w")
  assert str(e.value).endswith("Error whilst parsing config file: ValueError: unknown config "
                               "argument 'huge'; expected 'tiny' or nothing"), str(e.value)


def test_an_in_memory_base_config_is_copied_not_changed():
  base = ml_collections.ConfigDict({"stage": "x", "train": {"num_steps": 1}})
  c = member_config(Member("a", base, ["--config.train.num_steps=5"]), "/w")
  assert c.train.num_steps == 5 and base.train.num_steps == 1


def test_load_sweep_rejects_duplicates_and_unknown_dependencies(tmp_path):
  dup = write_sweep(tmp_path / "dup.py", "Member('a', 'configs/cddpm.py'), "
                                         "Member('a', 'configs/cddpm.py')")
  with pytest.raises(ValueError, match=r"dup.py: duplicate member names \['a'\]"):
    members_lib.load_sweep(dup)
  dep = write_sweep(tmp_path / "dep.py", "Member('a', 'configs/cddpm.py', after=['zzz'])")
  with pytest.raises(ValueError, match="dep.py: member a depends on zzz"):
    members_lib.load_sweep(dep)
  s = members_lib.load_sweep(TINY)
  with pytest.raises(ValueError, match="unknown member"):
    s.select(["zzz"])


# ----------------------------------------------------------------------------- sweeps in configs/


def test_sadm_ablation_sweep_covers_the_table_rows():
  s = members_lib.load_sweep(os.path.join(REPO, "configs", "sweeps", "sadm_ablation.py"))
  by = {m.name: m for m in s.members}
  trained = [m for m in s.members if m.name.startswith("train-")]
  assert len(trained) == 7 * 5 and not by["cddpm"].report
  rows = [m for m in s.members if m.report]
  assert {m.name for m in rows} >= {"sadm_draem", "unet_atlas", "sadm_draem_t250",
                                    "sadm_draem_lam0.25"}
  assert by["train-unet_atlas-f4"].after == () and by["train-sadm_brats-f3"].after == ("cddpm",)
  assert by["sadm_draem"].after == ("cddpm",) + tuple(f"train-sadm_draem-f{k}" for k in range(5))
  configs = {m.name: member_config(m, "/w") for m in s.members}  # every override is a real field
  assert configs["train-sadm_draem_no_residual-f0"].sadm.use_residual is False
  assert configs["train-unet_atlas-f4"].sadm.use_cddpm is False
  assert configs["train-unet_atlas-f4"].sadm.cddpm_workdir == ""
  assert configs["train-sadm_brats-f3"].sadm.repeat == 3
  assert configs["train-sadm_brats-f3"].sadm.cddpm_workdir == "/w/cddpm"
  assert configs["unet_brats"].evaluate.sadm_workdirs[0] == "/w/train-unet_brats-f0"
  assert configs["sadm_draem_t250"].diffusion.ensemble_timesteps == (249,)
  assert configs["sadm_draem_lam0.25"].evaluate.combination == "weighted"
  assert configs["sadm_draem_lam0.25"].evaluate.lam == 0.25


SWEEP_FILES = sorted(f for f in os.listdir(os.path.join(REPO, "configs", "sweeps"))
                     if f.endswith(".py"))


@pytest.mark.parametrize("name", SWEEP_FILES)
def test_every_shipped_sweep_has_distinct_valid_members(name):
  """Each member of configs/sweeps/* is a different run (its config differs from every other's)
  in its own W/<member>, and passes the checks sadm_jax.main makes before reading a file."""
  s = members_lib.load_sweep(os.path.join(REPO, "configs", "sweeps", name))
  seen = {}
  for m in s.members:
    c = member_config(m, "/w", ["--config.data.data_dir=/d"])
    members_lib.check_member_config(m, c)
    key = json.dumps(c.to_dict(), sort_keys=True, default=list)
    assert key not in seen, f"{m.name} is the same run as {seen.get(key)}"
    seen[key] = m.name
  assert len({members_lib.member_argv(m, "/w")[1] for m in s.members}) == len(s.members)
