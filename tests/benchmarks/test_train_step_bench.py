"""benchmarks/train_step.py's stdlib helper that the other benchmark scripts share."""

import os
import platform

from benchmarks import train_step


def test_host_info_names_the_machine_for_every_benchmark_json():
  info = train_step.host_info()
  assert info == {"cpus": os.cpu_count(), "platform": platform.platform(),
                  "processor": platform.processor(), "python": platform.python_version()}
