"""The default persistent compilation cache: where it goes, how it is turned off, who wins."""

import os

from sadm_jax.utils import compilation_cache as cc


def test_default_location_under_the_user_cache():
  env = {"XDG_CACHE_HOME": "/x/cache"}
  assert cc.apply(env) == "/x/cache/sadm_jax/xla"
  assert env[cc.JAX_ENV] == "/x/cache/sadm_jax/xla"
  assert "JAX_COMPILATION_CACHE_MAX_SIZE" not in env  # LRU eviction would need `filelock`
  home = {}
  assert cc.apply(home) == os.path.join(os.path.expanduser("~"), ".cache", "sadm_jax", "xla")


def test_switch_turns_it_off_or_moves_it():
  env = {cc.ENV_SWITCH: "0"}
  assert cc.apply(env) is None and cc.JAX_ENV not in env
  env = {cc.ENV_SWITCH: "~/elsewhere"}
  assert cc.apply(env) == os.path.join(os.path.expanduser("~"), "elsewhere")


def test_jax_setting_of_the_user_wins():
  env = {cc.JAX_ENV: "/mine", cc.ENV_SWITCH: "0"}
  assert cc.apply(env) == "/mine" and env == {cc.JAX_ENV: "/mine", cc.ENV_SWITCH: "0"}


def test_tests_run_with_the_session_cache():
  """conftest sets JAX's own variable, so `main` (in-process and in subprocesses) keeps using it."""
  import jax
  assert os.environ[cc.JAX_ENV] == jax.config.jax_compilation_cache_dir
  assert cc.apply(dict(os.environ)) == jax.config.jax_compilation_cache_dir
  assert jax.config.jax_compilation_cache_max_size == -1  # nothing here needs `filelock`


def test_a_cache_path_that_is_a_file_is_a_problem(tmp_path):
  f = tmp_path / "file"
  f.write_text("")
  assert cc.problem(None) is None and cc.problem(str(tmp_path / "new" / "xla")) is None
  for path in (f, f / "xla"):
    assert cc.problem(str(path)) == (
        f"compilation cache {path}: {f} is a file, not a directory (set {cc.ENV_SWITCH} or "
        f"{cc.JAX_ENV} to a directory, or {cc.ENV_SWITCH}=0 to turn the cache off)")
