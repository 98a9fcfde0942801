"""`xla_flags.flags_problem`: what in XLA_FLAGS the jaxlib cannot read, found before XLA aborts."""

from __future__ import annotations

import os
import subprocess

from sadm_jax.utils import xla_flags


def _problem(flags: str) -> str | None:
  return xla_flags.flags_problem({**os.environ, "XLA_FLAGS": flags})


def test_an_unknown_flag_a_bad_value_and_a_word_without_dashes_are_named():
  """XLA aborted the process in C++ on each when the backend started (for a bad value after
  listing every flag it knows)."""
  assert _problem("--xla_dump_to=/tmp/d --xla_no_such_flag=1") == (
      "XLA_FLAGS=--xla_dump_to=/tmp/d --xla_no_such_flag=1: XLA does not know "
      "--xla_no_such_flag=1 (a misspelt or removed flag?)")
  assert _problem("--xla_force_host_platform_device_count=two") == (
      "XLA_FLAGS=--xla_force_host_platform_device_count=two: XLA cannot read the value 'two' of "
      "--xla_force_host_platform_device_count")
  assert _problem("xla_dump_to") == (
      "XLA_FLAGS=xla_dump_to: 'xla_dump_to' does not start with -- (XLA reads such a word as a "
      "file of flags, and there is none)")
  assert _problem("--xla_dump_to=/tmp/d --xla_gpu_enable_latency_hiding_scheduler=true") is None


def test_the_packages_own_flags_are_not_read_in_a_child(monkeypatch):
  """Every process of the suite and every run with the package's defaults would pay ≈ 0.6 s."""
  def no_child(*a, **k):
    raise AssertionError("a child process was started")
  monkeypatch.setattr(subprocess, "run", no_child)
  flags = " ".join(["--xla_force_host_platform_device_count=8",
                    *xla_flags.cpu_default_flags("evaluate")])
  assert _problem(flags) is None and _problem("") is None
  monkeypatch.undo()
  assert _problem(flags.replace("-reduce", "-reduc")) is not None  # a value of the user's: read


def test_a_child_that_fails_for_another_reason_is_no_verdict(monkeypatch):
  """A jaxlib whose internals moved (the child's import fails) must not stop every run whose
  XLA_FLAGS names a flag of the user's."""
  monkeypatch.setattr(xla_flags, "_READ_FLAGS", "raise ImportError('no _jax here')")
  assert _problem("--xla_dump_to=/tmp/d") is None
  assert _problem("--xla_no_such_flag=1") is None
