"""benchmarks/volume_program.py: its options are checked before any worker starts."""

import pytest

from benchmarks import volume_program


def test_options_are_parsed_and_checked(tmp_path):
  args = volume_program.parse_args(["--models", "1, 4", "--rounds", "2"])
  assert args.models == [1, 4] and args.rounds == 2 and args.baseline_repo == ""
  assert args.out.endswith("volume_program_tiny_cpu.json")
  for bad in (["--models", "one"], ["--models", "0"], ["--repeats", "0"],
              ["--baseline_repo", str(tmp_path)]):
    with pytest.raises(SystemExit):
      volume_program.parse_args(bad)
