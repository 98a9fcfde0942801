"""Benchmarks (`python -m benchmarks.<name>`): they run with the package's XLA:CPU defaults, as `sadm_jax.main` does."""

from sadm_jax.utils import xla_flags

xla_flags.apply()  # before any benchmark module imports JAX
