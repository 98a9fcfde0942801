"""Predict's file handling without models: scan names, outputs after reruns and failed writes."""

from __future__ import annotations

import os

import pytest

from sadm_jax.evaluate import scans as scans_lib


def test_upper_case_extensions_are_scans_and_names_collide_regardless_of_case(tmp_path):
  """`.NII.GZ` / `.Nii` files (written by some Windows and scanner tools) are scans: listed in a
  folder, named without the extension; two scans whose names differ only in case would write the
  same files on a case-insensitive file system (macOS, Windows), so they are refused. A mask
  `A_mask.NII.GZ` is A's mask (it was neither listed as a scan nor found: A silently had none)."""
  for name in ("A.NII.GZ", "A_mask.NII.GZ", "b.Nii", "notes.txt"):
    (tmp_path / name).write_bytes(b"")
  scans, batch = scans_lib.list_scans(str(tmp_path))
  assert [(s.name, os.path.basename(s.image), s.mask and os.path.basename(s.mask))
          for s in scans] == [("A", "A.NII.GZ", "A_mask.NII.GZ"), ("b", "b.Nii", None)]
  assert scans_lib.scan_stem("x/sub.01.T1w.NII.GZ") == "sub.01.T1w"
  with pytest.raises(ValueError, match="two scans named 'sub-01' .* 'SUB-01'"):
    scans_lib.list_scans("x/sub-01.nii.gz,y/SUB-01.nii")
