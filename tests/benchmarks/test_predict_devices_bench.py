"""benchmarks/predict_devices.py: copies of the scan, interleaved timed runs after warm-ups, JSON."""

import json
import os

from benchmarks import predict_devices


def test_copies_warm_ups_interleaving_and_table(tmp_path, monkeypatch):
  scan, mask = tmp_path / "a.nii.gz", tmp_path / "a_mask.nii.gz"
  scan.write_bytes(b"image")
  mask.write_bytes(b"mask")
  calls = []

  def fake_run(repo, args, scans, root, devices):
    calls.append((repo, devices, sorted(os.listdir(scans))))
    return 10.0 * devices
  monkeypatch.setattr(predict_devices, "_run", fake_run)
  out = tmp_path / "r.json"
  entry = predict_devices.main([f"--checkpoint_dir={tmp_path}", f"--scan={scan}", f"--mask={mask}",
                                "--copies=2", "--devices=1,2", "--repeats=2",
                                f"--baseline_repo={tmp_path}", f"--out={out}"])
  names = ["scan-000_T1w.nii.gz", "scan-000_mask.nii.gz", "scan-001_T1w.nii.gz",
           "scan-001_mask.nii.gz"]
  assert all(c[2] == sorted(names) for c in calls)
  order = [(r == predict_devices.REPO, d) for r, d, _ in calls]
  cases = [(True, 1), (True, 2), (False, 1), (False, 2)]
  assert order == cases * 3  # warm-ups, then two interleaved repeats
  assert entry["table"]["current, 2 device(s)"] == {"median_s": 20.0, "scans": 2,
                                                     "scans_per_minute": 6.0}
  assert json.loads(out.read_text())["runs"]["baseline, 1 device(s)"] == [10.0, 10.0]
