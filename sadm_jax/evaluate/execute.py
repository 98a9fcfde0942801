"""Sharded passes: volumes split over processes, batches over local devices, host work overlapped."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import time
from concurrent import futures
from concurrent.futures.process import BrokenProcessPool
from typing import Iterator, Sequence

import jax
import ml_collections
import numpy as np

from sadm_jax import agreements, config as config_lib, distributed
from sadm_jax.anomaly import draem
from sadm_jax.data import cache as cache_lib
from sadm_jax.data.resample import affine_spacing
from sadm_jax.data.splits import Row
from sadm_jax.evaluate import inference, records, report, scoring, thresholds
from sadm_jax.evaluate.passes import Pass
from sadm_jax.evaluate.planning import DRAEM_SET, EvalRun, Models
from sadm_jax.evaluate.prefetch import prefetch
from sadm_jax.evaluate.store import CACHE_VERSION, Store, fingerprint, not_shared, safe
from sadm_jax.utils import io, workers as workers_lib
from sadm_jax.utils.xla_flags import available_cores

PNG_VOLUMES = 3  # montages for the first few test volumes of each run and data set


@dataclasses.dataclass
class Case:
  """One volume ready for inference; arrays slice-major [D, H, W] as cached."""
  name: str
  image: np.ndarray  # float32
  mask: np.ndarray  # bool
  seg: np.ndarray  # bool (all False for healthy volumes)
  affine: np.ndarray  # [4, 4] working grid, NIfTI voxel order
  index: int  # noise index
  brain: np.ndarray  # bool: `mask` eroded by evaluate.erode_mask, the M every map is scored in


@dataclasses.dataclass(frozen=True)
class Item:
  """One volume of one pass and the runs whose result for it is missing."""
  pass_: Pass
  row: Row
  pos: int  # position in the pass's rows (montages for the first few)
  runs: tuple  # EvalRun


class Evaluation:
  """The fixed state of one evaluation: config, models, runs, volumes, store and device programs."""

  _draem_pool = None  # worker processes for the DRAEM set's anomalies while `run_passes` runs

  def __init__(self, config: ml_collections.ConfigDict, workdir: str, models: Models,
               runs: Sequence[EvalRun], splits: dict, cache: cache_lib.VolumeCache):
    self.config, self.workdir = config, os.path.abspath(workdir)
    self.models, self.runs, self.splits, self.cache = models, list(runs), splits, cache
    self.store = Store(workdir)
    ecfg = config.evaluate
    self.faithful = bool(ecfg.faithful_metrics)
    self.settings = scoring.map_settings(config)
    self.mesh = scoring.local_mesh(int(config.mesh.num_devices))
    device = self.mesh.devices.flat[0]
    # Results of another platform, device kind or JAX release differ in their last bits: a store
    # resumed elsewhere recomputes them rather than mixing two machines' numbers in one report.
    common = {"backend": {"platform": device.platform, "device_kind": device.device_kind,
                          "jax": jax.__version__},
              "version": CACHE_VERSION, "seed": int(config.seed), "dtype": str(ecfg.dtype),
              "timesteps": [int(t) for t in config.diffusion.ensemble_timesteps],
              "shared_noise": bool(config.diffusion.shared_noise), "map": self.settings,
              "faithful_metrics": self.faithful,
              "preprocess": config_lib.preprocess_config(config).key(),
              "uint8_wrap": bool(config.anomaly.faithful_uint8_wrap)}
    self.programs = self._programs()
    # What a per-volume result depends on (besides τ, part of the test passes' fingerprints),
    # the XLA options of the program that computes it too (other last bits: a program with two
    # or more SegUnets compiles otherwise on CPU, `VolumeProgram.compiler_options`).
    self.run_settings = {r.id: {**common, **dataclasses.asdict(r), **models.fingerprint(r),
                                **self._program_options(r)} for r in self.runs}
    # The host's per-volume work (metrics, records, NIfTI/PNG files: ≈ 73 ms per 96×96×50 test
    # volume, GIL mostly released; `benchmarks/evaluation_host.py`) in threads behind
    # accelerators, which compute a batch faster than one thread finishes it (a SADM volume:
    # ≈ 0.1 s on an H100); on a CPU backend the devices' own threads use the cores.
    self.host_threads = host_threads(device.platform)
    self.medians: dict[int, float] = {}
    self._volume_keys: dict[tuple, str] = {}  # (img, mask, seg) -> cache entry key

  def _programs(self) -> dict[str, scoring.VolumeProgram]:
    """One program per cDDPM key ('' for SegUnets without residual) with all its runs."""
    groups: dict[str, list[EvalRun]] = {}
    for r in self.runs:
      if r.method != "threshold":
        groups.setdefault(r.cddpm_key, []).append(r)
    on_device = scoring.device_median()
    out = {}
    for key, runs in groups.items():
      segs = list(dict.fromkeys(r.sadm_workdir for r in runs if r.sadm_workdir))
      spec = [(r.id, r.combination, segs.index(r.sadm_workdir) if r.sadm_workdir else None)
              for r in runs]
      out[key] = scoring.VolumeProgram(self.models.cddpms.get(key) if key else None,
                                       [self.models.segnets[w] for w in segs], spec, self.settings,
                                       self.mesh, on_device)
    return out

  def _program_options(self, run: EvalRun) -> dict:
    if run.method == "threshold":
      return {}
    options = self.programs[run.cddpm_key].compiler_options
    return {"compiler_options": options} if options else {}  # none: earlier results stay valid

  def fingerprint(self, run: EvalRun, kind: str, extra: dict | None, row: Row) -> str:
    """What the result of `run` for volume `row` depends on: settings, models, the volume's files
    (its cache entry: their identity) and, for a test pass, τ and the FPR thresholds (`extra`)."""
    settings = self.run_settings[run.id]
    if run.method == "threshold":  # its maps |x − m|·M depend on the median m of its fold
      settings = {**settings, "intensity_median": self.intensity_median(run.data_fold)}
    files = (row.img, row.mask, row.seg)
    if files not in self._volume_keys:
      self._volume_keys[files] = cache_lib.entry_key(row, self.cache.cfg)
    return fingerprint({"settings": settings, "extra": extra, "kind": kind,
                        "volume": self._volume_keys[files]})

  # -- volumes -----------------------------------------------------------------------------------

  def case(self, pass_: Pass, row: Row) -> Case:
    vol = self.cache.load(row, mmap=False)
    image = np.asarray(vol.image, np.float32)
    mask = np.asarray(vol.mask) > 0
    seg = np.asarray(vol.seg) > 0 if vol.seg is not None else np.zeros(mask.shape, bool)
    if pass_.set_name == DRAEM_SET:  # seeded by the row's name, not the name the cache entry
      image, seg = self._draem(row.name, image, mask)  # was filled under (another row's)
    name = pass_.volume_name(row)
    return Case(name, image, mask, seg, vol.affine,
                inference.volume_index(f"{pass_.set_name}/{name}"),
                scoring.eroded_brain(mask, int(self.config.evaluate.erode_mask), name))

  def _draem(self, name: str, image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic DRAEM anomalies per axial slice, restricted to the brain (labels inside M);
    in a worker process while `run_passes` holds a pool (GIL-bound: ≈ 52 ms per 50×96×96
    volume, no faster in threads)."""
    cfg = draem.DraemConfig(faithful_uint8_wrap=bool(self.config.anomaly.faithful_uint8_wrap),
                            restrict_to_brain=True)
    args = (image, mask, (int(self.config.seed), inference.volume_index(name)), cfg)
    if self._draem_pool is None:
      return draem.synth_volume(*args)
    try:
      return self._draem_pool.submit(draem.synth_volume, *args).result()
    except BrokenProcessPool:
      raise workers_lib.WorkerDied(
          f"{DRAEM_SET}/{name}: the worker process drawing its anomalies died (the kernel's OOM "
          "killer?): what was finished is kept; run the same command again") from None

  def intensity_median(self, fold: int) -> float:
    """Median brain intensity of the healthy IXI training volumes of `fold` (threshold baseline).

    Process 0 computes it (or reuses its file); the others read the file once it is done.
    """
    if fold in self.medians:
      return self.medians[fold]
    rows = self.splits[f"IXI_train_fold{fold}"]
    path = os.path.join(self.store.root, "threshold", f"intensity_median_fold{fold}.json")
    pre = config_lib.preprocess_config(self.config)
    # the volumes' cache entries: their files' identity (a replaced file too) and preprocessing
    key = fingerprint({"rows": [cache_lib.entry_key(r, pre) for r in rows],
                       "preprocess": pre.key()})
    with agreements.together(f"the intensity median of fold {fold}"):
      if jax.process_index() == 0 and _read_json(path).get("fingerprint") != key:
        values = [np.asarray(v.image)[np.asarray(v.mask) > 0] for v in map(self.cache.load, rows)]
        pooled = np.concatenate(values)
        values.clear()  # the pooled voxels held twice at most: the concatenation is np.median's
        median = float(np.median(pooled, overwrite_input=True))  # work array, not copied again
        io.write_json(path, {"median": median, "fingerprint": key, "volumes": len(rows)})
    with agreements.together(f"reading the intensity median of fold {fold}"):
      saved = _read_json(path)
      if saved.get("fingerprint") != key:
        raise not_shared(path, "not the median process 0 wrote" if saved else
                         "missing or unreadable after process 0 wrote it")
    self.medians[fold] = float(saved["median"])
    return self.medians[fold]

  # -- passes ------------------------------------------------------------------------------------

  def scan(self, passes: Sequence[Pass], extras: dict, tag: str = "") -> tuple[list[Item], int]:
    """(volumes with a missing result, number of results already stored) over `passes`, the same
    on every process (a collective with several): each process looks up the stored results of
    its share of the volumes (p, p + P, ...), and the shares' answers are gathered once every
    process is through (looked up by every process, the store's reads grew with volumes ×
    processes, each process as long as one alone). tag: the step's name ('val', 'test')."""
    volumes = [(p, pos, row, runs) for p in passes for pos, row, runs in self._volumes(p)]
    items, cached = [], 0
    for (p, pos, row, runs), missing in zip(volumes, self._looked_up(volumes, extras, tag)):
      todo = tuple(r for k, r in enumerate(runs) if missing >> k & 1)
      cached += len(runs) - len(todo)
      if todo:
        items.append(Item(p, row, pos, todo))
    return items, cached

  def _looked_up(self, volumes: Sequence[tuple], extras: dict, tag: str) -> list[int]:
    """`_missing` of each of `volumes` ((pass, position, row, runs) each), in order: this
    process's share (p, p + P, ...) looked up, the others' gathered from them."""
    pid, count = jax.process_index(), jax.process_count()
    with agreements.together(f"the {tag} scan"):  # nobody writes before everyone has scanned
      mine = [self._missing(*v, extras) for v in volumes[pid::count]]
    if count == 1:
      return mine
    every = distributed.allgather_at(f"the {tag} scan's results", mine)
    if [len(e) for e in every] != [len(volumes[k::count]) for k in range(count)]:
      raise RuntimeError(f"the {tag} scan: the processes answered for {[len(e) for e in every]} "
                         f"volumes, not their shares of {len(volumes)}")
    return [every[i % count][i // count] for i in range(len(volumes))]

  def _missing(self, p: Pass, pos: int, row: Row, runs: Sequence[EvalRun], extras: dict) -> int:
    """Which of `runs` have no complete stored result for volume `row` of pass `p`: bit k for
    runs[k] (a record of the expected fingerprint, its val map, its report files)."""
    name, out = p.volume_name(row), 0
    for k, r in enumerate(runs):
      fp = self.fingerprint(r, p.kind, extras.get((p.set_name, r.id)), row)
      if self.store.read(r, p.set_name, p.split, name, fp, p.keep_map) is None or \
          not all(map(os.path.isfile, self._outputs(p, r, name, pos).values())):
        out |= 1 << k
    return out

  def _volumes(self, p: Pass) -> Iterator[tuple[int, Row, list[EvalRun]]]:
    """(position, row, the runs that evaluate it) of each volume of `p`, once each."""
    order: dict[tuple, tuple[int, Row]] = {}
    for rows in p.rows.values():
      for pos, row in enumerate(rows):
        order.setdefault((row.split, row.img, row.name), (pos, row))
    members = {rid: {(r.split, r.img, r.name) for r in rows} for rid, rows in p.rows.items()}
    runs = [r for r in self.runs if r.id in p.rows]
    for key, (pos, row) in order.items():
      yield pos, row, [r for r in runs if key in members[r.id]]

  def output_files(self, passes: Sequence[Pass]) -> set[str]:
    """Every report file of `passes`' volumes that this evaluation's settings ask for."""
    return {path for p in passes for pos, row, runs in self._volumes(p) for r in runs
            for path in self._outputs(p, r, p.volume_name(row), pos).values()}

  def run_passes(self, passes: Sequence[Pass], extras: dict, tag: str) -> tuple[list[str], int]:
    """Computes this process's share of the missing results of `passes` and waits for the others.

    extras: (set name, run id) -> τ / FPR thresholds of a test pass. Returns (the results this
    process computed, as 'run/set/split/volume', and the number already stored).
    """
    items, cached = self.scan(passes, extras, tag)  # the same items everywhere
    mine = items[jax.process_index()::jax.process_count()]
    done: list[str] = []
    start, b = time.time(), self.mesh.size
    batches = [mine[i:i + b] for i in range(0, len(mine), b)]
    # Behind accelerators a batch's volumes load in as many threads (the DRAEM set's anomalies
    # drawn in as many worker processes), as its host work is done (`_finish`).
    threads = max(1, min(self.host_threads, b))
    draem_pool = threads > 1 and any(it.pass_.set_name == DRAEM_SET for it in mine)
    # A volume that fails on one process (NaN scores, a damaged file) stops all of them at once.
    with agreements.together(f"the {tag} passes"), contextlib.ExitStack() as stack:
      if draem_pool:
        self._draem_pool = stack.enter_context(workers_lib.process_pool(threads))
        stack.callback(setattr, self, "_draem_pool", None)
      pending = None
      for batch, cases in prefetch(batches, lambda it: self.case(it.pass_, it.row), threads):
        agreements.check_others()  # another process stopped: this one too, now
        outs = self._dispatch(batch, cases)  # asynchronous: the device works while ...
        if pending is not None:
          done += self._finish(*pending, extras)  # ... the host finishes the previous batch
        pending = (batch, cases, outs)
      if pending is not None:
        done += self._finish(*pending, extras)
      logging.info("%s: %d results computed by process %d (%d stored before), %.1f s", tag,
                   len(done), jax.process_index(), cached, time.time() - start)
    return done, cached

  def _dispatch(self, batch: Sequence[Item], cases: Sequence[Case]) -> dict:
    keys = {r.cddpm_key for it in batch for r in it.runs if r.method != "threshold"}
    if not keys:
      return {}
    images = np.stack([c.image for c in cases])  # the program pads a short batch
    masks = np.stack([c.brain for c in cases])
    indices = [c.index for c in cases]
    return {k: self.programs[k].dispatch(images, masks, indices) for k in keys}

  def _finish(self, batch: Sequence[Item], cases: Sequence[Case], outs: dict,
              extras: dict) -> list[str]:
    """The host's work on a computed batch (maps, metrics, records, report files), each volume in
    a thread of its own up to `host_threads`; returns the results stored, in batch order."""
    host = jax.device_get(outs)  # one transfer per program and batch
    one = lambda b: self._finish_volume(batch[b], cases[b], host, b, extras)  # noqa: E731
    threads = min(self.host_threads, len(batch))
    if threads <= 1:
      return [d for b in range(len(batch)) for d in one(b)]
    with futures.ThreadPoolExecutor(threads, thread_name_prefix="evaluate-host") as pool:
      return [d for part in pool.map(one, range(len(batch))) for d in part]

  def _finish_volume(self, item: Item, case: Case, host: dict, b: int, extras: dict
                     ) -> list[str]:
    """Volume `b` of a fetched batch: every run's map, record and report files, stored."""
    done = []
    maps = {k: self.programs[k].maps(h, b, case.brain) for k, h in host.items()}
    p = item.pass_
    for r in item.runs:
      extra = extras.get((p.set_name, r.id))
      if r.method == "threshold":  # (its median is known before the passes, `run.run`: only
        # read here, in a host thread; computing it is a step of every process together)
        a = scoring.anomaly_for("threshold", "", case.image, case.brain, None, {},  # the models' M
                                self.medians[r.data_fold])
        recon = None
      else:
        a = maps[r.cddpm_key][r.id]
        recon = host[r.cddpm_key]["recon"][b] if r.cddpm_key else None
      thresholds.check_finite(a, f"{p.set_name}/{case.name} ({r.id})")  # NonFiniteScoreError
      rec = self._record(p, case, a, recon, extra or {})
      rec["fingerprint"] = self.fingerprint(r, p.kind, extra, item.row)
      if p.kind == "test":
        self.store.discard(r, p.set_name, p.split, case.name)  # before replacing its files
        self._write_outputs(r, p.set_name, case, a, recon, extra["tau"], item.pos)
      arrays = {"anomaly": a, "gt": case.seg, "mask": case.mask} if p.keep_map else None
      self.store.write(r, p.set_name, p.split, rec, arrays)  # the record last: done
      done.append(f"{r.id}/{p.set_name}/{p.split}/{case.name}")
    return done

  def _record(self, p: Pass, case: Case, a: np.ndarray, recon, extra: dict) -> dict:
    rec = records.base(case.name, case.image, recon, case.mask, case.seg)
    spacing = affine_spacing(case.affine)
    fpr = extra.get("fpr_thresholds", {})
    if p.kind == "val":
      return records.val_record(rec, a, case.seg, case.mask, spacing, self.faithful)
    if p.kind == "test":
      return records.test_record(rec, a, case.seg, case.mask, spacing, self.faithful,
                                 extra["tau"], fpr)
    return records.healthy_record(rec, a, case.mask, self.faithful, fpr)

  def _output_dir(self, run: EvalRun, set_name: str) -> str:
    return os.path.join(self.workdir, "report", "volumes", run.method, run.train_anomalies,
                        run.fold, set_name)

  def _outputs(self, p: Pass, run: EvalRun, name: str, pos: int) -> dict[str, str]:
    """The report files of one volume that the config asks for (test passes only): a result
    counts as done only with them, so a rerun writes those that are missing."""
    if p.kind != "test":
      return {}
    ecfg = self.config.evaluate
    return report.volume_output_paths(self._output_dir(run, p.set_name), safe(name),
                                      nifti=bool(ecfg.write_nifti),
                                      png=bool(ecfg.write_png) and pos < PNG_VOLUMES,
                                      recon=bool(run.cddpm_key))

  def _write_outputs(self, run: EvalRun, set_name: str, case: Case, a: np.ndarray, recon,
                     tau: float, pos: int) -> None:
    ecfg = self.config.evaluate
    png = bool(ecfg.write_png) and pos < PNG_VOLUMES
    if not (ecfg.write_nifti or png):
      return
    pred = (a > np.float32(tau)) & (case.mask if not self.faithful else True)
    report.write_volume_outputs(self._output_dir(run, set_name), safe(case.name), case.affine,
                                case.image, a, pred, case.mask, recon=recon, gt=case.seg,
                                nifti=bool(ecfg.write_nifti), png=png)


def host_threads(platform: str) -> int:
  """Threads for the host's work on a batch (`Evaluation._finish`): one per core this process may
  use behind accelerators, one on a CPU backend."""
  return 1 if platform == "cpu" else available_cores()


def _read_json(path: str) -> dict:
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    return {}
