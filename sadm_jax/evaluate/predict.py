"""The `predict` stage: anomaly maps and masks of new scans, written on each scan's own grid."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os

import jax
import ml_collections

from sadm_jax import agreements, distributed
from sadm_jax.data.errors import DataError
from sadm_jax.evaluate import hosts, outputs, preparation, scoring
from sadm_jax.evaluate.preparation import prepare, preparer
from sadm_jax.evaluate.predictor import Predictor, load_predictor
from sadm_jax.evaluate.prefetch import prefetch
from sadm_jax.evaluate.listing import list_scans
from sadm_jax.utils import io
from sadm_jax.utils.xla_flags import available_cores


# ----------------------------------------------------------------------------- one scan


def _warn_without_threshold(pred: Predictor) -> None:
  if pred.tau is None:
    logging.warning("no threshold (evaluation τ or predict.threshold): writing the maps only")


def predict(pred: Predictor, image_path: str, mask_path: str | None, out_dir: str) -> dict:
  """One scan on one device: `prepare`, `Predictor.infer`, `outputs.finish` in this process (the
  stage batches scans over the process's devices instead: `run`); returns the prediction record."""
  prep = prepare(pred, image_path, mask_path)
  _warn_without_threshold(pred)
  return outputs.finish(pred.labels, prep, pred.infer([prep.volume], scoring.local_mesh(1))[0],
                        out_dir)


# ----------------------------------------------------------------------------- many scans


class PredictFailed(DataError):
  """Some scans failed (one line naming them); `summary` holds every scan's status."""

  def __init__(self, message: str, summary: dict):
    super().__init__(message)
    self.summary = summary


def _one_line(e: Exception) -> str:
  text = " ".join(str(e).split())
  if not isinstance(e, DataError):
    text = f"{type(e).__name__}: {text}" if text else type(e).__name__
  return text[:400]


def _gather(records: list[dict]) -> list[dict]:
  """Every process's records (the union, ordered by scan index) on every process."""
  return sorted((r for rows in distributed.allgather_json(records) for r in rows),
                key=lambda r: r["index"])


def _batches(indices: list[int], devices: int) -> list[list[int]]:
  """`indices` in as few batches of at most `devices` as there can be, of even sizes: 10 scans
  on 8 devices are 5 + 5 (one program for 5 devices), not 8 + 2 padded with 6 copies."""
  if not indices:
    return []
  size = -(-len(indices) // -(-len(indices) // devices))
  return [indices[k:k + size] for k in range(0, len(indices), size)]


def _start(p: ml_collections.ConfigDict, config: ml_collections.ConfigDict):
  """(scans, batch, predictor, devices) of this process (`mesh.num_devices` of its own devices,
  0 = all: scans run one per device); with several processes, every process first
  learns whether the others started too, listed the same scans and loaded the same model
  (`Predictor.identity`), so that a process that could not start (an unreadable input or
  checkpoint on its host) stops them all instead of leaving them waiting for its records
  forever, no scan is predicted twice or never, and the summary's model and τ are every
  scan's."""
  with agreements.together("predict's start"):
    devices = int(config.mesh.num_devices) or jax.local_device_count()
    if devices > jax.local_device_count():
      raise ValueError(f"--config.mesh.num_devices={devices}: this process sees "
                       f"{jax.local_device_count()} device(s) (0 = all)")
    scans, batch = list_scans(p.input, p.mask, p.mask_suffix)
    predictor = load_predictor(p.checkpoint_dir, config)
  nproc = jax.process_count()
  # the scan list as (count, digest): the same on every process, whatever its length (the list
  # itself, gathered on every device, grew with the number of scans times processes)
  listed = [len(scans), hashlib.sha256(json.dumps([s.name for s in scans]).encode()).hexdigest()]
  every = distributed.allgather_json([listed, predictor.identity() if nproc > 1 else None])
  for k, (other, _) in enumerate(every):
    if other != listed:
      raise DataError(
          f"predict.input {p.input!r} lists {other[0]} scan(s) on process {k} but "
          f"{listed[0]} (or others) on process {jax.process_index()}: is it on a file "
          "system every host sees the same, and unchanged while predict starts?")
  for k, (_, theirs) in enumerate(every[1:], start=1):
    differ = hosts.first_difference(every[0][1], theirs)
    if differ is not None:
      key, got, first = differ
      raise ValueError(
          f"--config.predict.checkpoint_dir={p.checkpoint_dir}: process {k} of {nproc} loaded "
          f"another {key} than process 0 ({got} vs {first}):"
          " every host must load the same model and τ, with the same JAX release, on one kind of"
          " device (the summary names one model for every scan)")
  return scans, batch, predictor, devices


def _table(records: list[dict]) -> str:
  rows = [("scan", "status", "message", "output dir")] + [
      (r["scan"], r["status"], r["message"], r["output_dir"] or "-") for r in records]
  widths = [min(max(len(r[i]) for r in rows), 80) for i in range(3)]
  return "\n".join("  ".join(c.ljust(w) for c, w in zip(r[:3], widths)) + "  " + r[3]
                   for r in rows)


def _ok_message(out: dict) -> str:
  flagged = (f"{out['flagged_voxels_input_grid']} voxels flagged at τ {out['threshold']:.6g}"
             if "anomaly_mask" in out else "map only (no threshold)")
  turned = ("" if out["input_orientation"] == out["model_orientation"] else
            f", reoriented {out['input_orientation']}→{out['model_orientation']}")
  cut = out.get("brain_voxels_outside_crop", 0)
  cut = (f", {100 * cut / out['brain_voxels_input_grid']:.3g}% of the brain outside the crop box "
         "(not scored)" if cut else "")
  nan = out.get("nonfinite_voxels_outside_brain", 0)
  nan = f", {nan} NaN/Inf voxels outside the brain read as 0" if nan else ""
  return f"volume score {out['volume_score']:.4g}, {flagged}{turned}{cut}{nan}"


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """`stage=predict`: every scan of `predict.input` through the models of `predict.checkpoint_dir`.

  Scans are split over processes by index (process p predicts scans p, p + P, ...), once every
  process has started and listed the same scans (otherwise all stop: `_start`); a process runs
  its scans in batches, one scan per local device (`mesh.num_devices`, 0 = all), as evaluation
  does: the next batches' scans are read and preprocessed ahead (in `data.num_workers` threads,
  at most one per core, working across batches, so that batches of one scan keep them busy too;
  one background thread when 1; from `preparation.PROCESSES_FROM` threads on, each feeds a
  worker process, `preparer`), and the host writes one batch's outputs while the devices compute
  the next. A scan that fails is reported by name and the others go on (a device error fails its batch's scans). Process 0 writes
  `predict_summary.json` (every scan's status; `devices`: the most devices a process's batches
  ran on, 0 for the threshold baseline) into the output folder and prints the table. Returns
  the summary; raises PredictFailed (a DataError: exit code 2 from the command line) when any
  scan failed.
  """
  p = config.predict
  if not p.checkpoint_dir or not p.input:
    raise ValueError("set --config.predict.checkpoint_dir=<evaluation|SADM|cDDPM workdir> and "
                     "--config.predict.input=<scan.nii.gz | a,b,... | folder | "
                     "'dir/*/*_T1w.nii.gz' | scans.csv>")
  out_root = os.path.abspath(p.output or workdir)
  scans, batch, pred, devices = _start(p, config)
  pid, nproc = jax.process_index(), jax.process_count()
  path = os.path.join(out_root, "predict_summary.json")
  if pid == 0:  # an earlier run's, which vouches for outputs this run replaces: a run killed
    with contextlib.suppress(FileNotFoundError):  # before its own summary leaves none
      os.remove(path)
  groups = _batches(list(range(pid, len(scans), nproc)), devices)
  mesh = scoring.local_mesh(len(groups[0])) if groups and pred.method != "threshold" else None

  def load(i: int):  # in a prefetch thread: the scan prepared (`preparer`, below), or its error
    try:
      return per_scan(scans[i].image, scans[i].mask)
    except Exception as e:  # noqa: BLE001  (one bad scan must not stop the others)
      return e

  def fail(rec: dict, e: Exception, traceback: bool = True) -> None:
    if traceback and not isinstance(e, (DataError, OSError, ValueError)):  # a bug: its traceback
      logging.error("predict: %s failed", rec["scan"], exc_info=e)
    rec.update(status="failed", message=_one_line(e), output_dir="")
    logging.error("predict: %s failed: %s", rec["scan"], rec["message"])

  def dispatch(group: list[int], prepared: list) -> tuple:
    """(records, ready (index, Prepared) pairs, pending maps or the batch's error)."""
    recs = {i: {"index": i, "scan": scans[i].name, "image": os.path.abspath(scans[i].image),
                "mask": os.path.abspath(scans[i].mask) if scans[i].mask else "image > 0",
                "process": pid} for i in group}
    ready = []
    for i, prep in zip(group, prepared):
      if isinstance(prep, Exception):
        fail(recs[i], prep)
      else:
        ready.append((i, prep))
    try:  # the batch's scans at once, one per device (asynchronous)
      pending = pred.dispatch([prep.volume for _, prep in ready], mesh) if ready else None
    except Exception as e:  # noqa: BLE001
      pending = e
    return recs, ready, pending

  def finish_batch(recs: dict, ready: list, pending) -> list[dict]:
    try:
      maps = pred.collect(pending) if not isinstance(pending, Exception) and ready else []
    except Exception as e:  # noqa: BLE001
      pending = e
    if isinstance(pending, Exception):  # a device or compile error: every scan of the batch
      for k, (i, _) in enumerate(ready):
        fail(recs[i], pending, traceback=k == 0)  # the traceback once
      ready, maps = [], []
    writing = []  # each scan's outputs, written at once (in the worker processes, if any)
    for (i, prep), a in zip(ready, maps):
      out_dir = os.path.join(out_root, scans[i].name) if batch else out_root
      writing.append((i, out_dir, per_scan.finish(prep, a, out_dir, scans[i].name)))
    for i, out_dir, written in writing:
      try:
        out = written()
      except Exception as e:  # noqa: BLE001
        fail(recs[i], e)
      else:
        recs[i].update(status="ok", message=_ok_message(out), output_dir=out_dir, prediction=out)
        logging.info("predict: %s -> %s", scans[i].name, out["anomaly_map"])
    return list(recs.values())

  _warn_without_threshold(pred)
  records, waiting = [], None
  threads = max(1, min(int(config.data.num_workers), available_cores()))  # scans prepared at once
  mine = sum(len(g) for g in groups)  # (in as many worker processes from PROCESSES_FROM on)
  workers = threads if mine > 1 and threads >= preparation.PROCESSES_FROM else 1
  # (together: a process that stops in its share, a SIGTERM or Ctrl-C there, stops the others,
  # which would wait for its records below until JAX's timeout crashed them)
  with agreements.together("predict's scans"), \
      preparer(pred, workers) as per_scan:
    for group, prepared in prefetch(groups, load, threads):
      agreements.check_others()  # another process stopped: this one too, now
      started = dispatch(group, prepared)  # the devices work on this batch while ...
      if waiting is not None:
        records += finish_batch(*waiting)  # ... the host finishes the previous one
      waiting = started
    if waiting is not None:
      records += finish_batch(*waiting)
  records = _gather(records)
  # the most devices a process's batches ran on (a process without scans: none)
  devices_used = max(distributed.allgather_json(mesh.size if mesh is not None and groups else 0))
  if nproc > 1:  # the summary is process 0's: the others' outputs must be where it says they are
    unseen = set(distributed.allgather_json(  # (a set: not searched once per scan)
        [r["index"] for r in records
         if r["status"] == "ok" and not os.path.isfile(r["prediction"]["anomaly_map"])]
        if pid == 0 else None)[0])
    for r in (r for r in records if r["index"] in unseen):
      r.update(status="failed", output_dir="", message=(
          f"written by process {r['process']} but not found by process 0: is "
          f"{out_root} a folder every host shares?"))
  failed = [r for r in records if r["status"] != "ok"]
  summary = {"model": pred.source, "method": pred.method, "threshold": pred.tau,
             "threshold_source": pred.tau_source, "model_orientation": pred.orientation,
             "model_orientation_source": pred.orientation_source, "num_scans": len(records),
             "num_ok": len(records) - len(failed), "num_failed": len(failed),
             "processes": nproc, "devices": devices_used,
             "scans": records}
  if pid == 0:
    io.write_json(path, summary)
    tau = "none" if pred.tau is None else f"{pred.tau:.6g} ({pred.tau_source})"
    print(f"predict: {len(records)} scan(s), method {pred.method}, τ {tau}, model orientation "
          f"{pred.orientation}\n{_table(records)}\nsummary: {path}")
  if failed:
    what = (f"{failed[0]['scan']} ({failed[0]['message']})" if len(failed) == 1 else
            ", ".join(r["scan"] for r in failed[:20]) + (", ..." if len(failed) > 20 else ""))
    raise PredictFailed(f"predict: {len(failed)} of {len(records)} scan(s) failed: {what}; "
                        f"every scan's status in {path}", summary)
  return summary
