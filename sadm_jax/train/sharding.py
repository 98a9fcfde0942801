"""Device mesh, parameter-sharding rules by name (data parallel or FSDP), and global batch assembly."""

from __future__ import annotations

import re
from typing import Any, Sequence

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"
RULE_KINDS = ("fsdp", "replicate")  # what an `fsdp_rules` entry may ask for


def make_mesh(config: ml_collections.ConfigDict | None = None,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A 1-D ('data',) mesh over `devices` (default: all); `config.mesh.num_devices` > 0 limits it.

  With devices of several processes, a limited mesh takes the same number of devices from each
  (process by process): every process holds its part of each batch
  (`make_array_from_process_local_data`), so each needs devices in the mesh.
  """
  devices = list(devices if devices is not None else jax.devices())
  n = int(config.mesh.num_devices) if config is not None and config.mesh.num_devices else len(devices)
  if n > len(devices):
    raise ValueError(f"mesh.num_devices={n} but only {len(devices)} device(s) are visible")
  processes = sorted({d.process_index for d in devices})
  if n < len(devices) and len(processes) > 1:
    per, rest = divmod(n, len(processes))
    local = [[d for d in devices if d.process_index == p] for p in processes]
    if rest or per > min(map(len, local)):
      raise ValueError(f"mesh.num_devices={n}: the mesh takes the same number of devices from each "
                       f"of the {len(processes)} processes, which have {[len(x) for x in local]}; "
                       f"give a multiple of {len(processes)} up to "
                       f"{len(processes) * min(map(len, local))}, or 0 (all)")
    devices = [d for x in local for d in x[:per]]
  return Mesh(np.asarray(devices[:n]), (DATA_AXIS,))


def path_str(path) -> str:
  """'params/unet/input_blocks_0/kernel' for a jax tree path."""
  parts = []
  for k in path:
    for attr in ("key", "name", "idx"):
      if hasattr(k, attr):
        parts.append(str(getattr(k, attr)))
        break
    else:
      parts.append(str(k))
  return "/".join(parts)


def fsdp_spec(shape: Sequence[int], axis_size: int, min_size: int) -> P:
  """Shards the largest dimension divisible by `axis_size` over 'data'; replicate small leaves."""
  if axis_size <= 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
    return P()
  for dim in sorted(range(len(shape)), key=lambda d: -shape[d]):
    if shape[dim] % axis_size == 0:
      spec = [None] * len(shape)
      spec[dim] = DATA_AXIS
      return P(*spec)
  return P()


def state_specs(abstract_state: Any, mesh: Mesh, rules: Sequence[tuple[str, str]] = (),
                min_size: int = 2 ** 16) -> Any:
  """PartitionSpecs for every leaf, from (regex over the leaf path, 'fsdp'|'replicate') rules.

  The first matching rule wins; unmatched leaves are replicated (pure data parallelism for an
  empty rule list). Rules match optimiser-state leaves too (their paths end with the
  parameter's path), so FSDP shards Adam moments like their parameters.
  """
  compiled = [(re.compile(pattern), kind) for pattern, kind in rules]
  for _, kind in compiled:
    if kind not in RULE_KINDS:
      raise ValueError(f"unknown sharding rule kind {kind!r}; expected 'fsdp' or 'replicate'")
  axis_size = mesh.shape[DATA_AXIS]

  def spec(path, leaf):
    name = path_str(path)
    for pattern, kind in compiled:
      if pattern.search(name):
        return fsdp_spec(leaf.shape, axis_size, min_size) if kind == "fsdp" else P()
    return P()

  return jax.tree_util.tree_map_with_path(spec, abstract_state)


def state_shardings(abstract_state: Any, mesh: Mesh, rules: Sequence[tuple[str, str]] = (),
                    min_size: int = 2 ** 16) -> Any:
  specs = state_specs(abstract_state, mesh, rules, min_size)
  return jax.tree.map(lambda s: NamedSharding(mesh, s), specs,
                      is_leaf=lambda x: isinstance(x, P))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) dimension split over 'data'."""
  return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def global_batch(local: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Builds global arrays from this process's part of the batch (split over 'data')."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in local.items()}


def local_batch_size(global_batch_size: int, mesh: Mesh) -> int:
  """Per-process batch size; checks divisibility by the device and process counts."""
  n_dev = mesh.devices.size
  if global_batch_size % n_dev:
    raise ValueError(f"global batch size {global_batch_size} is not divisible by the "
                     f"{n_dev} devices of the mesh")
  return global_batch_size // jax.process_count()
