"""grain transforms and loaders that turn healthy slices into DRAEM-anomalous training/validation slices."""

from __future__ import annotations

from typing import Any

import grain
import ml_collections
import numpy as np

from sadm_jax.anomaly.draem import DraemConfig, synth_anomaly
from sadm_jax.data import augment as augment_lib
from sadm_jax.data import pipeline

# Records produced here (per slice, before batching):
#   'image': [H, W, 1] float32   x_ano, the slice with the synthetic anomaly (network input)
#   'seg':   [H, W, 1] uint8     y = the anomaly mask m in {0, 1} (training target)
#   'clean': [H, W, 1] float32   x, the (augmented) healthy slice before the anomaly
#   'mask':  [H, W, 1] uint8     brain mask; 'volume', 'slice': int32 record identity


def draem_config(config: ml_collections.ConfigDict) -> DraemConfig:
  """DraemConfig from `config.anomaly` of a resolved config (faithful_uint8_wrap set)."""
  a = config.anomaly
  if a.faithful_uint8_wrap is None:
    raise ValueError("anomaly.faithful_uint8_wrap is unresolved; call "
                     "sadm_jax.config.resolve first")
  return DraemConfig(p_anomalous=float(a.p_anomalous),
                     faithful_uint8_wrap=bool(a.faithful_uint8_wrap),
                     restrict_to_brain=bool(a.restrict_to_brain))


def add_anomaly(record: dict[str, Any], rng: np.random.Generator,
                cfg: DraemConfig) -> dict[str, Any]:
  """Applies `synth_anomaly` to a slice record; restrict_to_brain uses the record's brain mask."""
  x = record["image"][..., 0]  # [H, W]
  brain = record["mask"][..., 0] if cfg.restrict_to_brain else None
  x_ano, y = synth_anomaly(x, rng, cfg, brain)
  return {**record, "image": x_ano[..., None], "seg": y.astype(np.uint8)[..., None],
          "clean": np.asarray(x, np.float32)[..., None]}


class AnomalousTrainSlice(pipeline.TrainSlice):
  """`TrainSlice` (slice draw + intensity augmentation) followed by a DRAEM anomaly.

  Both draws come from grain's per-record rng, in that order, so a record is reproducible.
  """

  def __init__(self, table: pipeline.SliceTable, draem: DraemConfig, sampling: str = "brain",
               augment: augment_lib.IntensityAugConfig | None = None, augment_3d: bool = False):
    super().__init__(table, sampling, augment, augment_3d)
    self.draem = draem

  def random_map(self, element: int, rng: np.random.Generator) -> dict[str, Any]:
    return add_anomaly(super().random_map(element, rng), rng, self.draem)


class FixedAnomalousSlice(pipeline.FixedSlice):
  """`FixedSlice` plus a fixed anomaly: the generator is seeded by (seed, volume, slice) (Q26).

  The same (volume, slice) record thus always gets the same anomaly, whatever its batch, shard
  or the number of calls.
  """

  def __init__(self, table: pipeline.SliceTable, draem: DraemConfig, seed: int):
    super().__init__(table)
    self.draem = draem
    self.seed = int(seed)

  def map(self, element: tuple[int, int]) -> dict[str, Any]:
    v, k = (int(e) for e in element)
    rng = np.random.default_rng([self.seed, v, k])
    return add_anomaly(super().map((v, k)), rng, self.draem)


def draem_train_loader(table: pipeline.SliceTable, draem: DraemConfig, *, batch_size: int,
                       seed: int, sampling: str = "brain",
                       augment: augment_lib.IntensityAugConfig | None = None,
                       augment_3d: bool = False, worker_count: int = 0, shard_index: int = 0,
                       shard_count: int = 1, num_epochs: int | None = None,
                       read_threads: int = 16, prefetch: int = 500) -> grain.DataLoader:
  """Endless shuffled batches of anomalous slices for THIS process (see `pipeline.train_loader`)."""
  op = AnomalousTrainSlice(table, draem, sampling, augment, augment_3d)
  return pipeline.train_loader(table, batch_size=batch_size, seed=seed, num_epochs=num_epochs,
                               worker_count=worker_count, shard_index=shard_index,
                               shard_count=shard_count, read_threads=read_threads,
                               prefetch=prefetch, slice_op=op)


def draem_validation_loader(table: pipeline.SliceTable, draem: DraemConfig, *, batch_size: int,
                            seed: int, slices_per_volume: int = 8, shard_index: int = 0,
                            shard_count: int = 1) -> grain.DataLoader:
  """One deterministic pass over fixed slices with fixed anomalies, no augmentation (Q26)."""
  return pipeline.validation_loader(table, batch_size=batch_size,
                                    slices_per_volume=slices_per_volume, shard_index=shard_index,
                                    shard_count=shard_count,
                                    slice_op=FixedAnomalousSlice(table, draem, seed))
