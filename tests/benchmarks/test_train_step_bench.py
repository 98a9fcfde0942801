"""benchmarks/machine.py's stdlib helper that the other benchmark scripts share."""

import os
import platform

from benchmarks import machine


def test_host_info_names_the_machine_for_every_benchmark_json():
  info = machine.host_info()
  assert info == {"cpus": os.cpu_count(), "platform": platform.platform(),
                  "processor": platform.processor(), "python": platform.python_version()}
