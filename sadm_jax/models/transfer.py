"""Strict transfer of SparK-pretrained backbone weights (params + BN statistics) into encoder E."""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
from flax import traverse_util

BACKBONE = "backbone"  # submodule name shared by SparK and ResNet50Encoder
COLLECTIONS = ("params", "batch_stats")
# The only encoder leaves that are not loaded.
HEAD_LEAVES = (("params", "head", "kernel"), ("params", "head", "bias"))


def _flat(tree: Mapping[str, Any]) -> dict[tuple[str, ...], Any]:
  return traverse_util.flatten_dict(dict(tree)) if tree else {}


def _name(key: tuple[str, ...]) -> str:
  return "/".join(key)


def _spec(leaf: Any) -> tuple[tuple[int, ...], Any]:
  return tuple(leaf.shape), np.dtype(leaf.dtype)


def load_spark_backbone_into_encoder(encoder_variables: Mapping[str, Any],
                                     spark_variables: Mapping[str, Any]) -> dict[str, Any]:
  """Returns a copy of `encoder_variables` whose backbone params and batch_stats come from SparK.

  Strict (quirk Q8): the encoder's `backbone` leaves and SparK's `backbone` leaves must be the same
  set of keys with identical shapes and dtypes, in both `params` and `batch_stats` (265 leaves for
  ResNet-50: 53 conv kernels, 53 BN scale/bias pairs, 53 mean/var pairs — PyTorch's 318 tensors
  without `num_batches_tracked`); the only encoder leaves not loaded are
  `params/head/{kernel,bias}`.
  Anything else raises ValueError naming every missing, unexpected or mismatched key.
  Inputs are not modified. SparK's other leaves (decoder, projections, mask tokens) are ignored.
  """
  enc = {c: _flat(v) for c, v in encoder_variables.items()}
  missing, unexpected, mismatched, uncovered = [], [], [], []
  new = {c: dict(v) for c, v in enc.items()}
  for coll, leaves in enc.items():
    uncovered += [_name((coll,) + k) for k in leaves if coll not in COLLECTIONS
                  or (k[0] != BACKBONE and (coll,) + k not in HEAD_LEAVES)]
  for coll in COLLECTIONS:
    prefix = (coll, BACKBONE)
    ours = {k[1:]: k for k in enc.get(coll, {}) if k[0] == BACKBONE}
    theirs = _flat((spark_variables.get(coll) or {}).get(BACKBONE) or {})
    missing += [_name(prefix + k) for k in sorted(ours.keys() - theirs.keys())]
    unexpected += [_name(prefix + k) for k in sorted(theirs.keys() - ours.keys())]
    for k in sorted(ours.keys() & theirs.keys()):
      src, dst = theirs[k], enc[coll][ours[k]]
      if _spec(src) != _spec(dst):
        mismatched.append(f"{_name(prefix + k)}: spark {_spec(src)} vs encoder {_spec(dst)}")
      new[coll][ours[k]] = src
  problems = {"missing from the SparK backbone": missing,
              "unexpected in the SparK backbone": unexpected,
              "shape/dtype mismatch": mismatched,
              "encoder leaves outside the backbone other than the head": uncovered}
  if not any(k[0] == BACKBONE for c in COLLECTIONS for k in enc.get(c, {})):
    problems["nothing to load"] = ["the encoder variables have no backbone leaves"]
  if any(problems.values()):
    lines = ["SparK -> encoder transfer failed:"]
    for label, keys in problems.items():
      if keys:
        lines.append(f"  {label} ({len(keys)}):")
        lines.extend(f"    {k}" for k in keys)
    raise ValueError("\n".join(lines))
  return {c: traverse_util.unflatten_dict(v) for c, v in new.items()}
