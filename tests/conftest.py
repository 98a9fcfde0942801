"""Test setup: 8 fake CPU devices and a persistent compilation cache, configured before JAX loads."""

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

from sadm_jax.utils import xla_flags  # noqa: E402  (imports no JAX)

xla_flags.apply()  # the package's XLA:CPU defaults, as `python -m sadm_jax.main` runs with them

_CACHE = os.environ.get("SADM_TEST_JAX_CACHE",
                        os.path.join(os.path.dirname(os.path.dirname(__file__)), ".jax_cache"))

import jax  # noqa: E402  (must come after XLA_FLAGS)

jax.config.update("jax_compilation_cache_dir", _CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)

from absl import flags  # noqa: E402

# grain's multi-worker mode reads absl flags; outside absl.app.run they must be marked parsed.
flags.FLAGS.mark_as_parsed()
