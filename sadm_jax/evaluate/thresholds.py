"""Threshold selection: Zimmerer's bisection, the exact Dice optimum, healthy-FPR thresholds."""

from __future__ import annotations

import dataclasses
import math
from typing import Iterable, Sequence

import numpy as np

# Binarisation everywhere in sadm_jax is `score > threshold` (strict), as in the reference.
# A threshold is compared in the scores' own dtype (a float32 map is compared with float32(threshold)),
# which is what NumPy does for `array_f32 > python_float` and what the reference did.


class NonFiniteScoreError(ValueError):
  """An anomaly map holds NaN or ±Inf scores: ranking them would be meaningless (NaN sorts last)."""


def check_finite(scores, name: str | None = None) -> None:
  """Raises `NonFiniteScoreError` (naming `name`, e.g. the volume) if `scores` [...] has NaN/±Inf."""
  a = np.asarray(scores)
  if not np.issubdtype(a.dtype, np.floating):
    return
  finite = np.isfinite(a)
  if finite.all():
    return
  n_nan = int(np.count_nonzero(np.isnan(a)))
  n_inf = int(a.size - np.count_nonzero(finite) - n_nan)
  where = f"volume {name!r}" if name else "score map"
  raise NonFiniteScoreError(f"{where}: anomaly scores contain {n_nan} NaN and {n_inf} ±Inf of "
                            f"{a.size} voxels; metrics need finite scores (check the model's outputs)")


def _float_array(a: np.ndarray, name: str | None = None) -> np.ndarray:
  """`a` as a floating array, checked finite (`NonFiniteScoreError` naming `name` otherwise)."""
  a = np.asarray(a)
  a = a if np.issubdtype(a.dtype, np.floating) else a.astype(np.float64)
  check_finite(a, name)
  return a


@dataclasses.dataclass(frozen=True)
class RankedScores:
  """Scores split by label and sorted ascending; the one sort that AUROC, AUPRC and the searches share.

  Counting how many positives/negatives lie above a threshold is then a binary search, so a threshold
  search costs O(log n) per Dice evaluation instead of a pass over every voxel.

  Attributes:
    pos: scores of positive (lesion) voxels, ascending. [P]
    neg: scores of negative voxels, ascending, same dtype as `pos`. [N]
  """
  pos: np.ndarray
  neg: np.ndarray

  @classmethod
  def from_arrays(cls, scores: np.ndarray, labels: np.ndarray,
                  mask: np.ndarray | None = None) -> RankedScores:
    """Ranks `scores` [...] by binary `labels` [...] (label > 0 is positive), optionally within `mask`."""
    s = _float_array(scores)
    g = np.asarray(labels) > 0
    if s.shape != g.shape:
      raise ValueError(f"scores {s.shape} and labels {g.shape} differ in shape")
    if mask is not None:
      m = np.asarray(mask) > 0
      if m.shape != s.shape:
        raise ValueError(f"mask {m.shape} and scores {s.shape} differ in shape")
      s, g = s[m], g[m]
    s, g = s.ravel(), g.ravel()
    return cls(np.sort(s[g]), np.sort(s[~g]))

  @classmethod
  def merge(cls, *parts: RankedScores) -> RankedScores:
    """Pools several rankings (e.g. inside and outside the brain) without re-sorting from scratch."""
    dtype = np.result_type(*[p.pos.dtype for p in parts])
    pos = np.sort(np.concatenate([p.pos.astype(dtype, copy=False) for p in parts]), kind="stable")
    neg = np.sort(np.concatenate([p.neg.astype(dtype, copy=False) for p in parts]), kind="stable")
    return cls(pos, neg)

  @property
  def n_pos(self) -> int:
    return int(self.pos.size)

  @property
  def n_neg(self) -> int:
    return int(self.neg.size)

  def max_score(self) -> float:
    """Largest score (0.0 when there are no scores at all)."""
    tops = [a[-1] for a in (self.pos, self.neg) if a.size]
    return float(max(tops)) if tops else 0.0

  def count_above(self, threshold: float) -> tuple[int, int]:
    """(#positives, #negatives) with score > threshold, i.e. (TP, FP) of the binarisation."""
    t = self.pos.dtype.type(threshold)
    tp = self.n_pos - int(np.searchsorted(self.pos, t, side="right"))
    fp = self.n_neg - int(np.searchsorted(self.neg, t, side="right"))
    return tp, fp

  def dice_above(self, threshold: float) -> float:
    """Dice of `score > threshold` against the labels; 0/0 (nothing predicted, no lesion) is 0 here."""
    tp, fp = self.count_above(threshold)
    return _dice_counts(tp, tp + fp, self.n_pos)


def _dice_counts(tp: int, n_pred: int, n_gt: int) -> float:
  """2·TP/(|P|+|G|) without epsilon; the undefined 0/0 case is 0 (threshold searches only)."""
  den = n_pred + n_gt
  return 2.0 * tp / den if den else 0.0


def bisection_search_ranked(ranked: RankedScores, steps: int = 10,
                            reference_arithmetic: bool = False) -> tuple[float, float]:
  """Zimmerer's greedy quarter-point search on ranked scores; see `bisection_search`.

  `reference_arithmetic` runs it as the reference did: the bracket starts from `(0, np.max(map))`,
  a float32 scalar for its float32 maps, so every quarter point is rounded to float32 (NumPy's weak
  Python scalars); its Dice had no epsilon, so "nothing predicted, no lesion" is NaN and loses every
  `>=` comparison (it cannot become the best, and it sends the search to the upper half). That
  differs from the float64 search only in the last bits of τ and for label sets without positives.
  """
  if reference_arithmetic:
    dtype = np.result_type(ranked.pos.dtype, ranked.neg.dtype)
    ft = dtype.type if np.issubdtype(dtype, np.floating) else np.float64

    def dice(q) -> float:
      tp, fp = ranked.count_above(q)
      den = tp + fp + ranked.n_pos
      return 2.0 * tp / den if den else float("nan")
  else:
    ft, dice = float, ranked.dice_above
  lo, hi = ft(0.0), ft(ranked.max_score())
  best_dice, best_t = 0.0, ft(0.0)
  for _ in range(steps):
    if lo == hi:
      hi = ft(1.0)
    q1 = lo + (hi - lo) * ft(0.25)
    q3 = lo + (hi - lo) * ft(0.75)
    mid = lo + (hi - lo) * ft(0.5)
    d1, d3 = dice(q1), dice(q3)
    if d1 >= d3:
      if d1 >= best_dice:
        best_dice, best_t = d1, q1
      hi = mid
    else:
      if d3 >= best_dice:
        best_dice, best_t = d3, q3
      lo = mid
  return float(best_dice), float(best_t)


def bisection_search(scores: np.ndarray, labels: np.ndarray, steps: int = 10,
                     reference_arithmetic: bool = False) -> tuple[float, float]:
  """Reference threshold search (Zimmerer's iterative algorithm, docs/method.md §4.3), reproduced exactly.

  Starts from the bracket [lo, hi] = [0, max(scores)] (if lo == hi the bracket becomes (lo, 1)). Each
  step evaluates Dice of `scores > q` at q1 = lo + (hi−lo)/4 and q3 = lo + 3(hi−lo)/4; the better one
  (ties → q1) replaces the best so far if its Dice is ≥ the best; the search continues in [lo, mid] if
  Dice(q1) ≥ Dice(q3), else in [mid, hi]. 2·steps Dice evaluations; greedy (assumes unimodality).
  Dice has no epsilon; nothing predicted with an empty label set (0/0) counts as Dice 0 here (the
  reference got NaN, which compares False). The best starts at (Dice 0, threshold 0).

  Args:
    scores: anomaly scores, any shape. [...]
    labels: binary ground truth of the same shape. [...]
    steps: number of bracket halvings (10 in the reference: final width max/1024).
    reference_arithmetic: the reference's arithmetic (faithful): bracket and quarter points in the
      map's dtype, float32 for every sadm_jax map (the reference's bracket was `np.max` of a float32
      map), and 0/0 Dice NaN. Default: float64 bracket, 0/0 counts as 0.
  Returns:
    (best Dice, its threshold); the threshold is computed in float64 (or in the map's dtype, see above).
  """
  return bisection_search_ranked(RankedScores.from_arrays(scores, labels), steps, reference_arithmetic)


def exact_best_threshold_ranked(ranked: RankedScores) -> tuple[float, float]:
  """Global Dice optimum over thresholds on ranked scores; see `exact_best_threshold`."""
  pos, neg = ranked.pos, ranked.neg
  n_pos, n_neg = ranked.n_pos, ranked.n_neg
  empty = (0.0, ranked.max_score())  # threshold = max score: nothing predicted
  if n_pos == 0:
    return empty
  starts = np.flatnonzero(np.r_[True, pos[1:] != pos[:-1]])  # first index of each distinct value
  values = pos[starts]                                        # distinct positive scores, ascending
  neg_below = np.searchsorted(neg, values, side="left")       # #neg < value
  pos_ge = n_pos - starts
  neg_ge = n_neg - neg_below
  dice = 2.0 * pos_ge / (pos_ge + neg_ge + n_pos)
  # To predict exactly {score ≥ value} with `score > t`, t is the largest score below `value`;
  # with none below (`value` is the minimum: everything predicted), the largest number below it
  # in the scores' dtype.
  lower = np.full(values.shape, -np.inf)
  has_neg = neg_below > 0
  lower[has_neg] = neg[neg_below[has_neg] - 1]
  has_pos = starts > 0
  lower[has_pos] = np.maximum(lower[has_pos], pos[starts[has_pos] - 1])
  none = ~(has_neg | has_pos)
  lower[none] = np.nextafter(values[none], np.asarray(-np.inf, values.dtype))
  best = int(dice.size - 1 - np.argmax(dice[::-1]))  # ties → the highest threshold
  return float(dice[best]), float(lower[best])


def exact_best_threshold(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
  """The best Dice of `score > t` over every threshold t (the exact optimum).

  One sort and cumulative counts: the optimum is always reached with t just below a positive score
  (dropping a lowest included group that holds no lesion can only raise Dice), so only the distinct
  positive scores are candidates, each with t the largest score below it — or, below the global
  minimum (every voxel predicted), the largest number below it in the scores' dtype, so that
  `score > t` compared in that dtype includes it. Ties go to the highest threshold. With no
  positives the result is (0.0, max score) (nothing predicted; 0/0 counts as 0).

  Args:
    scores: anomaly scores, any shape. [...]
    labels: binary ground truth of the same shape. [...]
  Returns:
    (best Dice, threshold): a score value, or the number just below the smallest score.
  """
  return exact_best_threshold_ranked(RankedScores.from_arrays(scores, labels))


def _as_list(x) -> list:
  if x is None:
    return []
  if isinstance(x, np.ndarray) or not isinstance(x, (list, tuple)):
    return [np.asarray(x)]
  return [np.asarray(a) for a in x]


def healthy_fpr_thresholds(scores_healthy, brain_mask=None,
                           fprs: Sequence[float] = (0.01, 0.05, 0.1)) -> dict[float, float]:
  """Thresholds at given voxel false-positive rates on healthy volumes (docs/method.md §4.5, Q16).

  All voxels are negatives. For each target rate f the threshold is the smallest distinct score value
  t with #{score > t} ≤ f·N — equal to the reference's "first ROC threshold whose FPR exceeds f"
  (sklearn's ROC uses `score ≥ t`) without sklearn's dropping of intermediate ROC points. The
  reference pooled the whole grid (background included); pass the brain masks to count only brain
  voxels, which is the recommended use.

  Args:
    scores_healthy: one score volume [H, W, D] or a list of them (pooled).
    brain_mask: None (whole grid), or a mask / list of masks matching `scores_healthy`.
    fprs: target voxel false-positive rates in [0, 1].
  Returns:
    {f: threshold} for each f in `fprs`.
  """
  scores = _as_list(scores_healthy)
  masks = _as_list(brain_mask)
  if masks and len(masks) != len(scores):
    raise ValueError(f"{len(scores)} score volumes but {len(masks)} masks")
  return pooled_fpr_thresholds(zip(scores, masks or [None] * len(scores)), fprs)


def _sorted_concatenation(parts: list[np.ndarray]) -> np.ndarray:
  """`np.sort(np.concatenate(parts))`, emptying `parts` and sorting in place: the pooled voxels
  are held twice at most (the parts and their concatenation), not three times."""
  out = np.concatenate(parts)
  parts.clear()
  out.sort()
  return out


def pooled_fpr_thresholds(volumes: Iterable, fprs: Sequence[float] = (0.01, 0.05, 0.1)
                          ) -> dict[float, float]:
  """`healthy_fpr_thresholds` of (scores, brain mask or None) pairs, taken one at a time (e.g.
  read one by one from the result store: only the pooled voxels are held, not every map)."""
  pooled = []
  for i, (s, m) in enumerate(volumes):
    s = _float_array(s, f"#{i}")
    pooled.append(s[np.asarray(m) > 0] if m is not None else s.ravel())
  values = _sorted_concatenation(pooled) if pooled else np.zeros(0)
  n = values.size
  if n == 0:
    raise ValueError("no healthy voxels to derive thresholds from")
  out = {}
  for f in fprs:
    if not 0.0 <= f <= 1.0:
      raise ValueError(f"FPR target {f} outside [0, 1]")
    allowed = min(n, math.floor(f * n * (1.0 + 1e-12)))  # f·n may land just below an integer
    out[f] = float(values[max(n - allowed - 1, 0)])
  return out


def _pooled_ranking(score_list, label_list, mask_list, within_brain: bool,
                    names: Sequence[str] | None = None) -> RankedScores:
  scores, labels = _as_list(score_list), _as_list(label_list)
  if len(scores) != len(labels):
    raise ValueError(f"{len(scores)} score volumes but {len(labels)} label volumes")
  masks = _as_list(mask_list)
  if within_brain and not masks:
    raise ValueError("within_brain=True needs mask_list (or pass within_brain=False for the whole grid)")
  if masks and len(masks) != len(scores):
    raise ValueError(f"{len(scores)} score volumes but {len(masks)} masks")
  return pooled_ranking(zip(scores, labels, masks or [None] * len(scores)), within_brain, names)


def pooled_ranking(volumes: Iterable, within_brain: bool = True,
                   names: Sequence[str] | None = None) -> RankedScores:
  """The voxels of (scores, labels, brain mask or None) triples pooled and ranked, the triples
  taken one at a time (e.g. read one by one from the result store: only the pooled voxels are
  held, not every map, label and mask volume); inside the masks when `within_brain`."""
  pos, neg = [], []
  for i, (s, g, m) in enumerate(volumes):
    s, g = _float_array(s, names[i] if names else f"#{i}"), np.asarray(g) > 0
    if within_brain:
      m = np.asarray(m) > 0
      s, g = s[m], g[m]
    pos.append(s[g].ravel())
    neg.append(s[~g].ravel())
  return RankedScores(_sorted_concatenation(pos), _sorted_concatenation(neg))


def threshold_of(ranked: RankedScores, method: str = "exact",
                 reference_arithmetic: bool = False) -> tuple[float, float]:
  """(pooled Dice at τ, τ) of ranked pooled voxels (`pooled_ranking`): `select_threshold`."""
  if method == "exact":
    return exact_best_threshold_ranked(ranked)
  if method == "bisection":
    return bisection_search_ranked(ranked, reference_arithmetic=reference_arithmetic)
  raise ValueError(f"method must be 'exact' or 'bisection', got {method!r}")


def select_threshold(score_list, label_list, mask_list=None, method: str = "exact",
                     within_brain: bool = True, reference_arithmetic: bool = False,
                     names: Sequence[str] | None = None) -> tuple[float, float]:
  """Global threshold τ from pooled validation voxels (docs/method.md §4.3, Q15).

  Voxels of all volumes are pooled (inside the brain by default; `within_brain=False` pools the whole
  96×96×50 grid, background included, as the reference). `method='bisection'` is the reference's
  10-step search (faithful: `method='bisection', within_brain=False`); `method='exact'` finds the
  global optimum over all thresholds (`exact_best_threshold`).

  Args:
    score_list: anomaly maps, each [H, W, D] (or one array).
    label_list: ground-truth volumes matching `score_list`.
    mask_list: brain masks matching `score_list`; required when `within_brain`.
    method: 'exact' or 'bisection'.
    within_brain: pool only voxels inside the brain masks.
    reference_arithmetic: bisection in the reference's float32 arithmetic (see `bisection_search`).
    names: volume names for errors (a NaN/Inf map raises `NonFiniteScoreError` naming it).
  Returns:
    (pooled Dice at τ, τ).
  """
  ranked = _pooled_ranking(score_list, label_list, mask_list, within_brain, names)
  return threshold_of(ranked, method, reference_arithmetic)
