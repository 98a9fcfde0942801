"""Predict's per-scan preparation (read, check, reorient, preprocess, erode), its costly part in spawned worker processes; this module imports no JAX (the workers import it)."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import threading
from concurrent.futures.process import BrokenProcessPool
from typing import TYPE_CHECKING, Any, Callable, Iterator

import numpy as np

from sadm_jax import config as config_lib
from sadm_jax.data import orientation
from sadm_jax.data.errors import DataError
from sadm_jax.data.preprocess import PreprocessConfig, preprocess_volume
from sadm_jax.evaluate import outputs
from sadm_jax.evaluate.scans import clear_background, load_scan
from sadm_jax.utils import workers as workers_lib

if TYPE_CHECKING:
  from sadm_jax.evaluate.predictor import Predictor

# Predict prepares scans in worker processes from this many at once (`data.num_workers`, at most
# one per core), in threads below it. On 2 cores the two ways prepared the demo's scans alike
# (3.33 s against 3.35-3.61 s for six) and the processes' start-up made the whole stage 5-7 %
# slower; the preparation holds the GIL for ~10-17 % of its time, which caps threads at a few
# cores, and a busy main thread stalls them (BENCHMARKS.md, "Predict's scan preparation in worker
# processes").
PROCESSES_FROM = 4


@dataclasses.dataclass
class Read:
  """One scan read, reoriented to the models' axis order and preprocessed: what the maps need to
  be computed and carried back to the scan's own grid."""
  input_shape: tuple  # the scan's grid [H, W, D] as stored
  input_affine: np.ndarray  # [4, 4], likewise
  reo: orientation.Reorientation  # its voxel order -> the training data's
  shape_t: tuple  # [H', W', D']: the scan's grid in the training data's order
  brain_t: np.ndarray  # bool [H', W', D']: its brain mask in that order
  work: Any  # `preprocess_volume`'s result: image, mask and affine on the working grid
  nonfinite_outside_brain: int  # NaN/Inf voxels outside the brain, read as 0 (`clear_background`)


def read_and_preprocess(image_path: str, mask_path: str | None, model_orientation: str,
                        cfg: PreprocessConfig) -> Read:
  """Reads and checks one scan (`scans.load_scan`), reorients it exactly (a flip/permutation to
  `model_orientation`, so the models see it as they saw their training data) and preprocesses it
  as the training data was; DataError naming the file when it cannot be used. Module-level and
  JAX-free: a worker process (`utils.workers.process_pool`) runs it."""
  img, mask = load_scan(image_path, mask_path)
  image, cleared = clear_background(img.data, mask, image_path, mask_path)
  reo = orientation.reorientation(img.affine, img.data.shape, model_orientation)
  image_t, brain_t = reo.apply(image), reo.apply(mask) > 0  # [H', W', D'] training order
  work = preprocess_volume(image_t, brain_t.astype(np.uint8), None, reo.affine, cfg,
                           source=image_path)
  if not work.mask.any():  # the map would be 0 everywhere and its volume score NaN, as if "ok"
    raise DataError(f"{image_path}: its brain ({mask_path or 'image > 0'}, "
                    f"{int(brain_t.sum())} voxel(s)) leaves no voxel on the models' working grid "
                    f"(cropped to {cfg.crop_size}, downsampled ×{cfg.downsample}): a single-slice "
                    "or 2-D scan, or a brain of a few voxels, cannot be predicted")
  return Read(img.data.shape, img.affine, reo, image_t.shape, brain_t, work, cleared)


@dataclasses.dataclass
class Prepared(Read):
  """One scan `Read`, its brain eroded as evaluated; of the scan itself only what `finish` needs
  to carry the maps back (a batch of them waits in memory)."""
  image_path: str
  mask_path: str | None
  brain: np.ndarray  # bool [H, W, D] working grid: the mask eroded as evaluated (`Predictor.brain`)
  index: int  # noise index (`inference.volume_index` of the file name)

  @property
  def volume(self) -> tuple[np.ndarray, np.ndarray, int]:
    """(image, brain M, noise index) on the working grid, as `Predictor.infer` takes them."""
    return self.work.image, self.brain, self.index


def prepare(pred: Predictor, image_path: str, mask_path: str | None,
            read: Read | None = None) -> Prepared:
  """Reads, checks, reorients (an exact flip/permutation to `pred.orientation`, so the models
  see the scan as they saw their training data) and preprocesses one scan
  (`read_and_preprocess`, unless `read` is its result, from a worker process), then
  erodes its brain mask as the evaluation did; DataError naming the file when it cannot be used."""
  r = read or read_and_preprocess(
      image_path, mask_path, pred.orientation, config_lib.preprocess_config(pred.settings_config))
  from sadm_jax.evaluate import inference  # (JAX: in the caller, never in a worker)
  name = os.path.basename(image_path)
  return Prepared(**{f.name: getattr(r, f.name) for f in dataclasses.fields(Read)},
                  image_path=image_path, mask_path=mask_path, brain=pred.brain(r.work.mask, name),
                  index=inference.volume_index(name))


class _Here:
  """`preparer`'s helper without worker processes: everything in the caller's thread."""

  def __init__(self, pred: Predictor):
    self.pred = pred

  def __call__(self, image: str, mask: str | None) -> Prepared:
    return prepare(self.pred, image, mask)

  def finish(self, prep: Prepared, a: np.ndarray, out_dir: str, name: str | None
             ) -> Callable[[], dict]:
    """A call that writes the scan's outputs (`outputs.finish`) and returns its record."""
    return lambda: outputs.finish(self.pred.labels, prep, a, out_dir, name)


class _InPool(_Here):
  """`preparer`'s helper with a pool of worker processes (renewed when one dies)."""

  def __init__(self, pred: Predictor, workers: int, stack: contextlib.ExitStack):
    super().__init__(pred)
    self.cfg, self.workers, self.stack = (config_lib.preprocess_config(pred.settings_config),
                                          workers, stack)
    self.lock = threading.Lock()
    self.pools = [stack.enter_context(workers_lib.process_pool(workers))]

  def _renew(self, pool) -> None:
    with self.lock:  # one new pool for every thread that saw this one break
      if self.pools[-1] is pool:
        self.pools.append(self.stack.enter_context(workers_lib.process_pool(self.workers)))

  def _died(self, pool, path: str, doing: str) -> DataError:
    self._renew(pool)
    return DataError(f"{path}: the worker process {doing} it died (out of memory?)")

  def _submit(self, fn: Callable, *args):
    """(pool, future) of `fn(*args)` in the current pool; one that broke before (another scan's
    worker died, no thread has renewed it yet) refuses it at once: a new one takes it."""
    pool = self.pools[-1]
    try:
      return pool, pool.submit(fn, *args)
    except BrokenProcessPool:
      self._renew(pool)
      pool = self.pools[-1]
      return pool, pool.submit(fn, *args)

  def __call__(self, image: str, mask: str | None) -> Prepared:
    pool = self.pools[-1]
    try:
      pool, job = self._submit(read_and_preprocess, image, mask, self.pred.orientation, self.cfg)
      read = job.result()
    except BrokenProcessPool:
      raise self._died(pool, image, "preparing") from None
    return prepare(self.pred, image, mask, read)

  def finish(self, prep: Prepared, a: np.ndarray, out_dir: str, name: str | None
             ) -> Callable[[], dict]:
    """Starts writing the scan's outputs in a worker (`outputs.finish`); the call returned waits
    for its record."""
    light = dataclasses.replace(prep, brain=None,  # (not read there: not sent)
                                work=dataclasses.replace(prep.work, image=None))
    pool = self.pools[-1]
    try:
      pool, job = self._submit(outputs.finish, self.pred.labels, light, a, out_dir, name)
    except BrokenProcessPool:
      job = None

    def wait() -> dict:
      try:
        if job is None:
          raise BrokenProcessPool
        return job.result()
      except BrokenProcessPool:
        raise self._died(pool, prep.image_path, "writing the outputs of") from None
    return wait


@contextlib.contextmanager
def preparer(pred: Predictor, workers: int) -> Iterator[_Here]:
  """`prepare(image_path, mask_path)` for predict's prefetch threads (thread-safe), and
  `.finish(prep, a, out_dir, name)`, which starts writing a scan's outputs and returns a call
  that waits for its record. With workers > 1 each scan's reading and preprocessing, and the
  writing of its outputs (carrying the map back to the scan's grid, compressing it), run in a pool
  of that many spawned processes (the erosion, milliseconds, here), out of the GIL's way: a host
  that feeds several GPUs needs more cores than threads can use (`PROCESSES_FROM`), and one thread
  writing a batch's outputs (1.4 s per 160×200×164 scan) could not keep up with 8 GPUs. A worker
  that dies (the kernel's OOM killer) fails the scans its pool held (Python's pool fails them
  all), each named, and a new pool takes the others; a SIGTERM lets a worker finish its scan."""
  if workers <= 1:
    yield _Here(pred)
    return
  with contextlib.ExitStack() as stack:
    yield _InPool(pred, workers, stack)
