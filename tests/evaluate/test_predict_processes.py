"""Predict on several processes: the scans split over them, one process's failure stops them all."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import types

import pytest

from configs import predict as predict_config
from sadm_jax import agreements, config as config_lib, distributed
from sadm_jax.data.errors import DataError
from sadm_jax.evaluate import predict
from tests import loopback
from tests.evaluate.conftest import scan_config


def test_folder_batch_in_two_processes_survives_a_corrupt_file(tiny_cddpm_dir, scan, tmp_path):
  """`python -m sadm_jax.main` on a folder with one corrupt scan, as 2 processes on loopback.

  The scans are split over the processes; both exit 2 with one line naming the corrupt file; the
  good scans' outputs exist; process 0's summary lists all three.
  """
  folder = tmp_path / "scans"
  os.makedirs(folder)
  for stem in ("sub-01_T1w", "sub-02_T1w"):  # masks by the rule: sub-0k_mask.nii.gz
    for src, dst in ((scan["image"], f"{stem}.nii.gz"), (scan["mask"], f"{stem[:6]}_mask.nii.gz")):
      with open(src, "rb") as f:
        (folder / dst).write_bytes(f.read())
  (folder / "broken.nii.gz").write_bytes(b"\x1f\x8b not a NIfTI at all")
  out = tmp_path / "out"
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  results = loopback.run_main(
      ["--config=configs/predict.py", f"--workdir={tmp_path}",
       f"--config.predict.checkpoint_dir={tiny_cddpm_dir}", f"--config.predict.input={folder}",
       f"--config.predict.output={out}", "--config.predict.threshold=0.5"],
      2, str(tmp_path), env, 600, ok_codes=(0, 2))
  texts = [(stdout, stderr) for _, stdout, stderr in results]
  for (code, _, stderr) in results:
    assert code == 2, stderr[-3000:]
  for stdout, stderr in texts:
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("error: predict: 1 of 3 scan(s) failed: broken (") and (
        "broken.nii.gz: cannot read as NIfTI" in last), last
  for stem in ("sub-01_T1w", "sub-02_T1w"):
    for name in ("anomaly_map", "anomaly_mask", "prediction"):
      ext = "json" if name == "prediction" else "nii.gz"
      assert os.path.isfile(out / stem / f"{stem}_{name}.{ext}"), (stem, name)
  with open(out / "predict_summary.json") as f:
    summary = json.load(f)
  assert [(r["scan"], r["status"], r["process"]) for r in summary["scans"]] == [
      ("broken", "failed", 0), ("sub-01_T1w", "ok", 1), ("sub-02_T1w", "ok", 0)]
  assert summary["processes"] == 2
  assert summary["scans"][1]["mask"] == str(folder / "sub-01_mask.nii.gz")
  assert "broken" in texts[0][0] and "sub-02_T1w" in texts[0][0]  # process 0 prints the table
  assert "sub-02_T1w" not in texts[1][0]


# a stand-in predictor: what a process loaded, as `Predictor.identity` gives it
_MODEL = types.SimpleNamespace(identity=lambda: {"method": "cddpm", "threshold": 0.5})


def _other_process(answer):
  """`allgather_json` of 2 processes, process 1 answering `answer(mine)`; the short rounds that
  tell a SIGTERM a process got while it waited (`agreements._first_failure`: a bool) get "none"
  from process 1 without a call of `answer`."""
  def allgather(mine):
    told = isinstance(mine, list) and len(mine) == 2 and isinstance(mine[1], bool)
    return [mine, [mine[0], False] if told else answer(mine)]
  return allgather


def _as_process_0_of_2(monkeypatch, others: list, loaded: list):
  """This process as process 0 of 2, the other process's start-up messages being `others` (its
  failure or not, then its scans); `loaded` records each load_predictor call (a stand-in
  predictor: nothing is predicted)."""
  monkeypatch.setattr(predict.jax, "process_count", lambda: 2)
  monkeypatch.setattr(predict.jax, "process_index", lambda: 0)
  monkeypatch.setattr(predict, "load_predictor", lambda *a: loaded.append(a) or _MODEL)
  others = iter(others)
  monkeypatch.setattr(distributed, "allgather_json", _other_process(lambda mine: next(others)))
  monkeypatch.setattr(predict, "predict", lambda *a: pytest.fail("predicted a scan"))


def _listed(*names: str) -> list:
  """What a process sends for its scan list at predict's start: (count, digest of the names)."""
  return [len(names), hashlib.sha256(json.dumps(list(names)).encode()).hexdigest()]


def test_a_process_that_cannot_start_stops_the_others(scan, tmp_path, monkeypatch):
  """Process 1 could not load the model or list the scans: process 0 stops with its reason
  instead of predicting its share and then waiting for process 1's records forever."""
  _as_process_0_of_2(monkeypatch, [["predict's start", "x: unreadable (No such file or directory)"]],
                     [])
  c = scan_config(str(tmp_path / "model"), scan, tmp_path / "out")
  with pytest.raises(ValueError, match=r"^process 1 of 2 failed \(x: unreadable .*\) during "
                                       r"predict's start; every process stopped"):
    predict.run(c, str(tmp_path))
  assert not os.path.exists(tmp_path / "out" / "predict_summary.json")


def test_processes_listing_other_scans_stop(scan, tmp_path, monkeypatch):
  """A folder that differs between hosts (not shared, or changing): the split by index would
  predict some scans twice and others never, so every process stops, naming the input."""
  _as_process_0_of_2(monkeypatch, [["predict's start", None],
                                   [_listed("sub-01_T1w", "sub-02_T1w"), _MODEL.identity()]], [])
  c = scan_config(str(tmp_path / "model"), {"image": scan["dir"]}, tmp_path / "out")
  with pytest.raises(DataError, match=r"lists 2 scan\(s\) on process 1 but 1 .*on process 0: is "
                                      r"it on a file system every host sees the same"):
    predict.run(c, str(tmp_path))


def test_processes_that_loaded_other_models_stop(scan, tmp_path, monkeypatch):
  """Process 1 loaded another τ (or other weights): its maps would be binarised otherwise than
  the summary says, so every process stops at start-up, naming the setting and both values."""
  _as_process_0_of_2(monkeypatch, [["predict's start", None],
                                   [_listed("sub-01_T1w"),
                                    {**_MODEL.identity(), "threshold": 0.25}]], [])
  c = scan_config(str(tmp_path / "model"), scan, tmp_path / "out")
  with pytest.raises(ValueError, match=r"^--config.predict.checkpoint_dir=.*: process 1 of 2 "
                                       r"loaded another threshold than process 0 \(0.25 vs 0.5\)"):
    predict.run(c, str(tmp_path))
  assert not os.path.exists(tmp_path / "out" / "predict_summary.json")


def test_a_process_that_cannot_start_tells_the_others_first(tmp_path, monkeypatch):
  """The failing process itself sends its one-line reason before raising its own error."""
  sent = []
  monkeypatch.setattr(predict.jax, "process_count", lambda: 2)
  monkeypatch.setattr(distributed, "allgather_json", _other_process(
      lambda mine: sent.append(mine) or mine))
  c = scan_config(str(tmp_path / "model"), {"image": str(tmp_path / "missing_folder")}, tmp_path)
  with pytest.raises(ValueError) as e:
    predict.run(c, str(tmp_path))
  assert sent == [["predict's start", agreements._error_line(e.value)]]


def test_outputs_another_host_cannot_see_fail_in_the_summary(scan, tmp_path, monkeypatch):
  """Process 1 wrote its scan's outputs where process 0 does not see them (predict.output on a
  host's own disk): the summary does not call that scan ok at a path that is not there."""
  folder = tmp_path / "scans"
  os.makedirs(folder)
  for stem in ("a", "b"):
    with open(scan["image"], "rb") as f:
      (folder / f"{stem}.nii.gz").write_bytes(f.read())
  elsewhere = str(tmp_path / "other_host" / "b" / "b_anomaly_map.nii.gz")
  theirs = {"index": 1, "scan": "b", "image": str(folder / "b.nii.gz"), "mask": "image > 0",
            "process": 1, "status": "ok", "message": "volume score 1", "output_dir": "x",
            "prediction": {"anomaly_map": elsewhere}}
  calls = []

  def allgather(mine):  # process 1: started, listed the same scans, then its records
    calls.append(mine)
    return {1: ["predict's start", None], 2: [_listed("a", "b"), {"method": "cddpm"}],
            3: ["predict's scans", None], 4: [theirs], 5: 1}.get(len(calls))  # 5: the devices
    # its batches ran on
  monkeypatch.setattr(distributed, "allgather_json", _other_process(allgather))
  _as_process_0_predicting(monkeypatch)
  c = scan_config(str(tmp_path / "model"), {"image": str(folder)}, tmp_path / "out")
  with pytest.raises(DataError, match=r"1 of 2 scan\(s\) failed: b \(written by process 1 but "
                                      r"not found by process 0: is .*out a folder every host"):
    predict.run(c, str(tmp_path))
  with open(tmp_path / "out" / "predict_summary.json") as f:
    assert [(r["scan"], r["status"]) for r in json.load(f)["scans"]] == [
        ("a", "ok"), ("b", "failed")]


def test_outputs_process_0_cannot_see_are_found_without_a_search_per_scan(scan, tmp_path,
                                                                          monkeypatch):
  """Process 0 marks failed the scans whose outputs it cannot see: each scan's record was looked
  up in the list of unseen scans, a search through it (scans × unseen scans: quadratic with a
  folder not shared). The unseen scans are a set now."""
  folder = tmp_path / "scans"
  os.makedirs(folder)
  names = [f"s{i}" for i in range(6)]
  for stem in names:
    with open(scan["image"], "rb") as f:
      (folder / f"{stem}.nii.gz").write_bytes(f.read())
  theirs = [{"index": i, "scan": names[i], "image": str(folder / f"{names[i]}.nii.gz"),
             "mask": "image > 0", "process": 1, "status": "ok", "message": "volume score 1",
             "output_dir": "x", "prediction": {"anomaly_map": str(tmp_path / "elsewhere" / n)}}
            for i, n in enumerate(names) if i % 2]
  searched = []

  class Unseen(list):  # process 0's list of unseen scans, as gathered
    def __contains__(self, x):
      searched.append(x)
      return super().__contains__(x)
  calls = []

  def allgather(mine):
    calls.append(mine)
    return {1: ["predict's start", None], 2: [_listed(*names), {"method": "cddpm"}],
            3: ["predict's scans", None], 4: theirs, 5: 1}.get(len(calls))
  gather = _other_process(allgather)
  monkeypatch.setattr(distributed, "allgather_json", lambda mine: [Unseen(mine), None] if len(
      calls) == 5 else gather(mine))
  _as_process_0_predicting(monkeypatch)
  c = scan_config(str(tmp_path / "model"), {"image": str(folder)}, tmp_path / "out")
  with pytest.raises(DataError, match=r"3 of 6 scan\(s\) failed: s1, s3, s5; "):
    predict.run(c, str(tmp_path))
  assert searched == []


def _as_process_0_predicting(monkeypatch):
  """This process as process 0 of 2 with a stand-in model that 'predicts' its scans: an empty
  `a_anomaly_map.nii.gz` per scan."""
  monkeypatch.setattr(predict.jax, "process_count", lambda: 2)
  monkeypatch.setattr(predict.jax, "process_index", lambda: 0)
  monkeypatch.setattr(predict, "load_predictor", lambda *a: types.SimpleNamespace(
      source="m", method="cddpm", tau=None, tau_source="", orientation="RAS",
      identity=lambda: {"method": "cddpm"},
      orientation_source="", dispatch=lambda volumes, mesh: [None] * len(volumes),
      collect=lambda pending: pending))

  def fake_finish(out_dir):
    os.makedirs(out_dir)
    path = os.path.join(out_dir, "a_anomaly_map.nii.gz")
    open(path, "wb").close()
    return {"anomaly_map": path, "volume_score": 1.0, "input_orientation": "RAS",
            "model_orientation": "RAS"}

  class PerScan:  # every scan 'prepared', its outputs 'written'
    def __call__(self, image, mask):
      return types.SimpleNamespace(volume=None)

    def finish(self, prep, a, out_dir, name):
      return lambda: fake_finish(out_dir)

  @contextlib.contextmanager
  def preparer(pred, workers):
    yield PerScan()
  monkeypatch.setattr(predict, "preparer", preparer)


def test_a_process_stopped_in_its_share_stops_the_others(scan, tmp_path, monkeypatch, capsys):
  """Process 1 got a SIGTERM (or Ctrl-C) while it predicted its share: it left, and process 0,
  done with its own share, waited for its records until JAX's timeout crashed it (a traceback,
  exit 1). The processes now agree at the end of their shares: process 0 stops as after that
  SIGTERM, one line, no summary."""
  from sadm_jax.utils import signals
  folder = tmp_path / "scans"
  os.makedirs(folder)
  for stem in ("a", "b"):
    with open(scan["image"], "rb") as f:
      (folder / f"{stem}.nii.gz").write_bytes(f.read())
  theirs = iter([["predict's start", None], [_listed("a", "b"), {"method": "cddpm"}],
                 ["predict's scans", "\0interrupted: SIGTERM"]])
  monkeypatch.setattr(distributed, "allgather_json", _other_process(lambda mine: next(theirs)))
  _as_process_0_predicting(monkeypatch)
  c = scan_config(str(tmp_path / "model"), {"image": str(folder)}, tmp_path / "out")
  with pytest.raises(signals.Terminated):
    predict.run(c, str(tmp_path))
  assert capsys.readouterr().out.endswith("SIGTERM (process 1) during predict's scans; stopping\n")
  assert os.path.isfile(tmp_path / "out" / "a" / "a_anomaly_map.nii.gz")  # its own share: done
  assert not os.path.exists(tmp_path / "out" / "predict_summary.json")


def _predict_in_two_processes(tmp_path, input_of, tau_of=lambda pid: 0.3) -> list:
  """`predict` of a hand-written evaluation (the threshold baseline: no model) in 2 processes on
  loopback, process p reading `input_of(p)` with τ `tau_of(p)`; [(exit code, stdout, stderr)]
  per process."""
  _write_threshold_model(tmp_path)
  return loopback.run_main(
      lambda pid: ["--config=configs/predict.py", f"--workdir={tmp_path}",
                   f"--config.predict.checkpoint_dir={tmp_path / 'model'}",
                   f"--config.predict.input={input_of(pid)}",
                   f"--config.predict.output={tmp_path / 'out'}",
                   f"--config.predict.threshold={tau_of(pid)}"],
      2, str(tmp_path), {**os.environ, "JAX_PLATFORMS": "cpu"}, 25, ok_codes=(0, 2))


def test_a_process_killed_in_its_share_stops_the_other_with_one_line(scan, tmp_path):
  """2 processes on loopback (the threshold baseline of a hand-written evaluation: no model), 2
  scans; process 1 dies without a word (SIGKILL, as the kernel's OOM killer) as it starts its
  share. Process 0 predicts its own scan, finds process 1 gone in the agreement at the end of
  the share and exits 2 within seconds with one line saying so (no summary: the rerun predicts
  every scan again). Before, JAX's error of the collective was printed as is ("error: UNKNOWN:
  Gloo AllGather failed: ... Connection closed by peer"), or, raised as a RuntimeError, as a
  traceback and then a C++ abort once the coordination service's heartbeat timed out (100 s)."""
  import time
  folder = tmp_path / "scans"
  os.makedirs(folder)
  for stem in ("a", "b"):
    with open(scan["image"], "rb") as f:
      (folder / f"{stem}.nii.gz").write_bytes(f.read())
  _write_threshold_model(tmp_path)
  port = loopback.free_port()
  start = time.time()
  results = loopback.run_processes(
      lambda pid: ["tests.evaluate.killed_main", "--config=configs/predict.py",
                   f"--workdir={tmp_path}", f"--config.predict.checkpoint_dir={tmp_path / 'model'}",
                   f"--config.predict.input={folder}", f"--config.predict.output={tmp_path / 'out'}",
                   "--config.predict.threshold=0.3",
                   f"--config.distributed.coordinator_address=127.0.0.1:{port}",
                   "--config.distributed.num_processes=2", f"--config.distributed.process_id={pid}"],
      2, str(tmp_path), {**os.environ, "JAX_PLATFORMS": "cpu"}, 60, ok_codes=(0, 2, -9))
  took = time.time() - start
  (code0, _, err0), (code1, _, err1) = results
  assert (code0, code1) == (2, -9), (err0[-2000:], err1[-2000:])
  lines = err0.strip().splitlines()
  assert lines[-1].startswith(
      "error: another of the 2 processes is gone (killed? out of memory? a lost host?) during "
      "predict's scans; this process stopped too: run the same command again to resume (JAX: "
      ), err0[-2000:]
  assert not loopback.crash_lines(err0), err0[-3000:]  # no traceback, no C++ abort
  assert took < 50, took  # (the run itself: ≈ 20 s on 2 cores)
  assert os.path.isfile(tmp_path / "out" / "a" / "a_anomaly_map.nii.gz")  # process 0's share
  assert not os.path.exists(tmp_path / "out" / "b")
  assert not os.path.exists(tmp_path / "out" / "predict_summary.json")


def _write_threshold_model(tmp_path) -> None:
  """A hand-written evaluation in `tmp_path`/model whose only run is the threshold baseline."""
  os.makedirs(tmp_path / "model" / "eval")
  settings = config_lib.resolve(predict_config.get_config())
  (tmp_path / "model" / "eval" / "config.json").write_text(json.dumps(settings.to_dict()))
  (tmp_path / "model" / "eval" / "models.json").write_text(json.dumps({"runs": [
      {"id": "threshold", "method": "threshold", "combination": "residual", "sadm_workdir": "",
       "cddpm_workdir": "", "intensity_median": 0.5, "train_anomalies": "draem", "tau": {}}]}))


def test_two_processes_stop_together_when_one_cannot_start(scan, tmp_path):
  """2 processes on loopback (the threshold baseline of a hand-written evaluation: no model):
  process 1's input is a CSV it cannot read. Both exit 2 in seconds, process 0 naming process
  1's reason; before, process 0 predicted its share and then waited for process 1's records
  until its collective timed out (30 s on CPU, with a traceback)."""
  (tmp_path / "bad.csv").write_text("img,msk\nx,y\n")
  (code0, _, err0), (code1, _, err1) = _predict_in_two_processes(
      tmp_path, lambda pid: tmp_path / "bad.csv" if pid else scan["image"])
  assert (code0, code1) == (2, 2), (err0[-2000:], err1[-2000:])
  assert err1.strip().splitlines()[-1].startswith("error: predict.input=") and "CSV" in err1
  assert err0.strip().splitlines()[-1].startswith(
      "error: process 1 of 2 failed (predict.input="), err0[-2000:]
  assert "during predict's start; every process stopped" in err0
  assert not os.path.exists(tmp_path / "out" / "sub-01_T1w_anomaly_map.nii.gz")


def test_a_path_one_host_lacks_stops_every_process_at_start_up(scan, tmp_path):
  """2 processes on loopback: process 1's `predict.input` does not exist there, which the CLI's
  up-front checks refuse before JAX starts. Both exit 2 within seconds, process 0 naming process
  1's reason (`agreements.agree`); before, process 1 exited alone and process 0 waited in
  jax.distributed's start-up until its timeout aborted it (300 s, a C++ check failure)."""
  (code0, _, err0), (code1, _, err1) = _predict_in_two_processes(
      tmp_path, lambda pid: tmp_path / "absent.nii.gz" if pid else scan["image"])
  assert (code0, code1) == (2, 2), (err0[-2000:], err1[-2000:])
  assert err1.strip().splitlines()[-1].startswith("error: --config.predict.input="), err1[-2000:]
  assert err0.strip().splitlines()[-1].startswith(
      "error: process 1 of 2 stopped at its start-up checks (--config.predict.input="), err0[-2000:]
  assert not os.path.exists(tmp_path / "out" / "sub-01_T1w_anomaly_map.nii.gz")


def test_two_processes_with_other_thresholds_stop_at_start_up(scan, tmp_path):
  """2 processes on loopback given another `predict.threshold` each (a launch script that
  differs between hosts): both exit 2 before predicting, with the same line naming the
  setting and both values; before, each binarised its share at its own τ while the summary
  named process 0's for every scan."""
  (code0, _, err0), (code1, _, err1) = _predict_in_two_processes(
      tmp_path, lambda pid: scan["image"], lambda pid: 0.4 if pid else 0.3)
  assert (code0, code1) == (2, 2), (err0[-2000:], err1[-2000:])
  for err in (err0, err1):
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: --config.predict.checkpoint_dir=") and (
        "process 1 of 2 loaded another threshold than process 0 (0.4 vs 0.3)" in last), last
  assert not os.listdir(tmp_path / "out")  # made at the start; nothing predicted


def test_two_processes_stop_together_when_one_cannot_restore_the_model(tiny_cddpm_dir, scan,
                                                                        tmp_path):
  """2 processes on loopback, process 1 reading a copy of the tiny cDDPM with a truncated array
  file (a damaged file only its host sees): both exit 2 within seconds, process 1 naming its
  checkpoint, process 0 naming process 1's reason. Before, process 0 restored the model and then
  waited in Orbax's cross-process restore barrier, a collective that process 1's agreement
  (`agreements.together`) mismatched: on CPU gloo aborted both (SIGABRT, tracebacks, no line)."""
  import shutil
  damaged = tmp_path / "damaged"
  shutil.copytree(tiny_cddpm_dir, damaged)
  step = max((d for d in os.listdir(damaged / "best") if d.isdigit()), key=int)
  arrays = [os.path.join(r, f) for r, _, fs in os.walk(damaged / "best" / step / "state")
            for f in fs if os.sep + "d" + os.sep in os.path.join(r, f)]
  for path in arrays:  # every array file: whichever holds the model's weights
    with open(path, "r+b") as f:
      f.truncate(os.path.getsize(path) // 2)
  results = loopback.run_main(
      lambda pid: ["--config=configs/predict.py", f"--workdir={tmp_path}",
                   f"--config.predict.checkpoint_dir={damaged if pid else tiny_cddpm_dir}",
                   f"--config.predict.input={scan['image']}",
                   f"--config.predict.output={tmp_path / 'out'}"],
      2, str(tmp_path), {**os.environ, "JAX_PLATFORMS": "cpu"}, 60, ok_codes=(0, 2))
  (code0, _, err0), (code1, _, err1) = results
  assert (code0, code1) == (2, 2), (err0[-2000:], err1[-2000:])
  last1 = err1.strip().splitlines()[-1]
  assert last1.startswith(f"error: {damaged}: its best checkpoint (step {step}) cannot be "
                          "restored: "), last1
  last0 = err0.strip().splitlines()[-1]
  assert last0.startswith(f"error: process 1 of 2 failed ({damaged}: its best checkpoint"), last0
  assert last0.endswith("during predict's start; every process stopped"), last0
  assert not os.listdir(tmp_path / "out")  # nothing predicted
