"""benchmarks/cpu_ops.py: the package variants run with the package's XLA flags and CPU settings."""

import pytest

from benchmarks import ab, cpu_ops
from sadm_jax.utils import xla_flags


def test_variant_flags_and_worker_environments(monkeypatch):
  package = cpu_ops.variant_flags("package").split()
  assert package == xla_flags.cpu_default_flags()
  heaps = cpu_ops.variant_flags("package_all_heaps").split()
  assert heaps == package + [f"--{xla_flags.HEAP_FLAG}={xla_flags.CPU_HEAP_BYTES}"]
  with pytest.raises(SystemExit, match="unknown variant"):
    cpu_ops.variant_flags("no_such_variant")
  seen = {}
  monkeypatch.setattr(ab, "run_worker", lambda module, variant, argv, env: seen.update({variant: env}))
  for variant in ("package", "package_all_heaps", "default"):
    cpu_ops.run_worker(variant, [])
  for variant in ("package", "package_all_heaps"):  # the package's own settings (host_heap) on
    assert seen[variant]["SADM_XLA_CPU_DEFAULTS"] == seen[variant]["SADM_CPU_HEAP_REUSE"] == "1"
  assert seen["default"]["SADM_XLA_CPU_DEFAULTS"] == seen["default"]["SADM_CPU_HEAP_REUSE"] == "0"
  assert seen["default"]["XLA_FLAGS"] == ""
