"""Sharded evaluation: 2 processes × 4 devices and 1 device (resuming) store the results of 8 fake devices; a failure on one process stops all."""

from __future__ import annotations

import csv
import glob
import json
import math
import os
import shutil

from sadm_jax import main as main_lib
from tests import loopback
from tests.evaluate.conftest import copy_data, evaluate_tiny_config, threshold_only


def _csv(workdir):
  with open(os.path.join(workdir, "report", "metrics.csv")) as f:
    return list(csv.DictReader(f))


def _assert_same_metrics(got, want, atol=1e-6):
  """Same rows and columns; numbers equal within `atol`."""
  assert [list(r) for r in got] == [list(r) for r in want]
  for g, w in zip(got, want):
    for k in w:
      if g[k] == w[k]:
        continue
      a, b = float(g[k]), float(w[k])
      assert (math.isnan(a) and math.isnan(b)) or abs(a - b) <= atol, (w["method"], w["test_set"], k)


def _records(workdir):
  """Every stored per-volume record: 'method/anomalies/fold/set/split/volume' -> its record."""
  root = os.path.join(workdir, "eval")
  out = {}
  for path in glob.glob(os.path.join(root, *["*"] * 5, "*.json")):
    with open(path) as f:
      out[os.path.relpath(path, root)[:-len(".json")]] = json.load(f)
  return out


def _assert_same_records(got, want):
  """The same volumes, each with the same record bit for bit (NaN = NaN): no volume dropped,
  duplicated or given another's result."""
  assert sorted(got) == sorted(want)
  for name in want:
    assert json.dumps(got[name], sort_keys=True) == json.dumps(want[name], sort_keys=True), name


def _launch_two(workdir: str, data_dir: str, cddpm: str, sadm: str, args=(),
                timeout: float = 600.0):
  """`python -m sadm_jax.main` evaluate (with `args`) in 2 processes × 4 CPU devices on loopback.

  Each process has 8 fake CPU devices, as the test process, and evaluates on 4 of them
  (`mesh.num_devices=4`): XLA:CPU splits a convolution's work by the number of devices the process
  was started with, which moves the last float32 bits (measured: 2.7e-6 in a SegUnet output
  between processes of 8 and of 4 devices; 4 and 1 agree), so equal processes compare like with
  like while the evaluation itself runs on 2 × 4 devices.
  """
  env = {**os.environ, "JAX_PLATFORMS": "cpu",
         "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
  results = loopback.run_main(
      ["--config=configs/evaluate.py:tiny", f"--workdir={workdir}",
       f"--config.data.data_dir={data_dir}",
       f"--config.data.cache_dir={os.path.join(data_dir, 'cache')}",
       f"--config.evaluate.cddpm_workdir={cddpm}", f"--config.evaluate.sadm_workdirs=('{sadm}',)",
       "--config.mesh.num_devices=4", *args],
      2, os.path.dirname(workdir), env, timeout)
  for code, stdout, stderr in results:
    assert code == 0, (stdout + stderr)[-4000:]
  return [stdout + stderr for _, stdout, stderr in results]


def test_eight_devices_two_processes_and_one_device_agree(evaluation, eval_data_dir,
                                                         tiny_cddpm_dir, tiny_sadm_dir, tmp_path):
  """The session evaluation ran on 8 fake devices; rerun on 2 processes × 4 devices, every test
  set but ATLAS_v2: the same volume results, each computed exactly once across the processes. A
  rerun of every set in one process on 1 device reuses them, computes the ATLAS_v2 volumes and
  writes the session's metrics. (A volume's outputs do not depend on the device count, bit for
  bit: tests/evaluate/test_inference.py, 1 vs 4 devices. The two processes leave ATLAS_v2 out
  rather than compute it for the rerun to compute again: 18 of 54 volume results.)
  """
  eight, summary8 = evaluation
  assert summary8["devices_per_process"] == 8 and summary8["volumes_computed"] == 54
  atlas = lambda root, *rest: glob.glob(os.path.join(root, "eval", "*", "*", "*", "ATLAS_v2",
                                                     *rest))
  # threshold, cDDPM and SADM × 3 val + 3 test volumes
  missing = len(atlas(eight, "*", "*.json"))
  assert (len(atlas(eight)), missing) == (3, 18), (atlas(eight), missing)
  c = evaluate_tiny_config(eval_data_dir, tiny_cddpm_dir, [tiny_sadm_dir])
  others = tuple(s for s in c.evaluate.test_sets if s != "ATLAS_v2")
  assert len(others) == len(c.evaluate.test_sets) - 1
  two = str(tmp_path / "two" / "work")
  logs = _launch_two(two, eval_data_dir, tiny_cddpm_dir, tiny_sadm_dir,
                     [f"--config.evaluate.test_sets={others!r}"])
  want = _csv(eight)
  sets = {r["test_set"] for r in _csv(two)}
  assert sets and "ATLAS_v2" not in sets
  _assert_same_metrics(_csv(two), [r for r in want if r["test_set"] in sets])
  want_records = _records(eight)
  _assert_same_records(_records(two), {k: v for k, v in want_records.items()
                                       if k.split("/")[3] != "ATLAS_v2"})
  computed = []
  for p in range(2):
    with open(os.path.join(two, "eval", f"process_{p}-of-2.json")) as f:
      mine = json.load(f)["computed"]
    assert mine, f"process {p} computed nothing"
    computed += mine
  assert len(computed) == len(set(computed)) == 54 - missing
  assert f"{54 - missing} volume result(s) computed, 0 reused" in logs[0]
  assert "volume result" not in logs[1]
  assert "(2 process(es) × 4 device(s))" in logs[0]

  # Resumption across process and device counts: one process on 1 device reuses what two
  # computed and computes what is missing (every method's ATLAS_v2 volumes).
  assert not atlas(two)
  c.mesh.num_devices = 1
  again = main_lib.run_stage(c, two)
  assert again["devices_per_process"] == 1
  assert again["volumes_computed"] == missing and again["volumes_cached"] == 54 - missing
  _assert_same_metrics(_csv(two), want)
  _assert_same_records(_records(two), want_records)
  shutil.rmtree(str(tmp_path / "two"))


def test_the_tpu_launcher_refuses_url_paths(tmp_path):
  """Processes share the evaluation's store through the file system: a gs:// workdir would be a
  local folder gs:/... on each worker. launch/tpu_vm.sh refuses it in one line, exit code 2."""
  import subprocess
  script = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(__file__))), "launch",
                        "tpu_vm.sh")
  env = {"PATH": os.environ["PATH"], "TPU_NAME": "pod", "ZONE": "z", "DRY_RUN": "1"}
  for arg in ("--workdir=gs://b/eval", "--config.evaluate.cddpm_workdir=gs://b/cddpm"):
    res = subprocess.run(["bash", script, "--", "--config=configs/evaluate.py", arg], env=env,
                         cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and res.stdout == "", res
    assert res.stderr.startswith(f"{arg}: sadm_jax reads and writes file-system paths, not URLs")
    assert len(res.stderr.splitlines()) == 1
  ok = subprocess.run(["bash", script, "--", "--workdir=/mnt/shared/w"], env=env, cwd=tmp_path,
                      capture_output=True, text=True, timeout=60)
  assert ok.returncode == 0 and "--workdir=/mnt/shared/w" in ok.stdout, ok


def _launch_threshold(workdir: str, data_dir: str, devices: int = 1, args=(), timeout: float = 120.0):
  """The threshold baseline on Brats21 (no model: seconds) in 2 processes × `devices` CPU devices;
  (exit code, stdout, stderr) per process, whatever the codes."""
  env = {**os.environ, "JAX_PLATFORMS": "cpu",
         "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
  return loopback.run_main(
      ["--config=configs/evaluate.py:tiny", f"--workdir={workdir}",
       f"--config.data.data_dir={data_dir}",
       f"--config.data.cache_dir={os.path.join(data_dir, 'cache')}",
       "--config.evaluate.methods=('threshold',)", "--config.evaluate.test_sets=('Brats21',)",
       "--config.evaluate.include_ixi=False", *args],
      2, os.path.dirname(workdir), env, timeout, ok_codes=(0, 2))


def test_a_volume_that_fails_on_one_process_stops_every_process_at_once(tiny_data_dir, tmp_path):
  """A volume's error (NaN scores: its cache entry damaged) stops the process evaluating it with
  its one line (exit code 2); the other process, done with its own share, stops at once too with
  a line naming it. (They waited in their next collective until JAX's shutdown barrier aborted
  both, 5 minutes later, with SIGABRT and no error line from process 0.)"""
  import numpy as np
  data = copy_data(tiny_data_dir, str(tmp_path / "data"))
  main_lib.run_stage(threshold_only(data), str(tmp_path / "first"))  # fills the volume cache
  (entry,) = [os.path.dirname(m) for m in glob.glob(os.path.join(data, "cache", "*", "*", "meta.json"))
              if json.load(open(m))["name"] == "Brats21_val_001"]
  image = np.load(os.path.join(entry, "image.npy"))
  np.save(os.path.join(entry, "image.npy"), np.full_like(image, np.nan))
  # Brats21_val_001 is the second volume of the first pass: process 1's
  (code0, _, err0), (code1, _, err1) = _launch_threshold(str(tmp_path / "two" / "work"), data)
  assert code1 == 2 and "error: " in err1 and "Brats21_val_001" in err1 and "NaN" in err1, err1[-3000:]
  assert code0 == 2, err0[-3000:]
  line = next(x for x in err0.splitlines() if x.startswith("error: "))
  assert line.startswith("error: process 1 of 2 failed") and "Brats21_val_001" in line, line


def test_two_processes_of_the_threshold_baseline_and_their_start_up_line(tiny_data_dir, tmp_path):
  """2 processes × 2 devices, one each (`mesh.num_devices` counts each process's devices in this
  stage): they preprocess and evaluate their shares and write the metrics of one process; the
  start-up line names the mesh each process evaluates on. (It named a mesh over the first devices
  of all processes: 'mesh data=1', or a warning that 1 device cannot be shared by 2 processes.)"""
  data = copy_data(tiny_data_dir, str(tmp_path / "data"))
  two = str(tmp_path / "two" / "work")
  (code0, out0, err0), (code1, _, err1) = _launch_threshold(
      two, data, devices=2, args=["--config.mesh.num_devices=1"])
  assert code0 == code1 == 0, (err0 + err1)[-3000:]
  assert out0.startswith("process 0/2, 4 devices (2 local, cpu), mesh data=1 per process\n"), out0
  assert "(2 process(es) × 1 device(s))" in out0 and "mesh.num_devices" not in err0 + err1
  one = str(tmp_path / "one")
  main_lib.run_stage(threshold_only(data), one)
  assert _csv(two) == _csv(one)
