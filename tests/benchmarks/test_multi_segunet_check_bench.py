"""benchmarks/multi_segunet_check.py: its options are checked before any worker starts."""

import pytest

from benchmarks import multi_segunet_check as check


def test_options_are_parsed_and_checked():
  args = check.parse_args(["--variants", "package, ynn_conv", "--dispatches", "3"])
  assert args.variant_list == ["package", "ynn_conv"] and args.dispatches == 3
  assert args.devices == 8 and args.atol == 1e-4 and args.worker == ""
  assert set(check.VARIANTS) >= {"package", "package_no_option", "ynn_conv", "ynn_reduce",
                                 "no_defaults"}
  assert check.VARIANTS["package"][1] and not check.VARIANTS["package_no_option"][1]
  for bad in (["--variants", "fast"], ["--variants", ","], ["--devices", "1"],
              ["--dispatches", "0"]):
    with pytest.raises(SystemExit):
      check.parse_args(bad)
