"""Threshold searches: a hand-traced bisection, the exact optimum, healthy-FPR thresholds, pooling."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn import metrics as skm

from sadm_jax.evaluate import thresholds as th

# Negatives at 0.05, 0.3, 0.55; lesion at 0.8 and 1.0. Dice(score > q) is 4/7, 4/6, 4/5, 1, 2/3, 0 on
# q < .05, [.05, .3), [.3, .55), [.55, .8), [.8, 1), q ≥ 1.
SCORES = np.array([0.05, 0.3, 0.55, 0.8, 1.0], np.float32)
LABELS = np.array([0, 0, 0, 1, 1], bool)


def test_bisection_hand_trace():
  # step [lo, hi]          q1 (Dice)        q3 (Dice)        → best, next bracket
  #  1  [0, 1]             .25 (2/3)        .75 (1)          → (1, .75), upper [.5, 1]
  #  2  [.5, 1]            .625 (1)         .875 (2/3)       → (1, .625), lower [.5, .75]
  #  3  [.5, .75]          .5625 (1)        .6875 (1)        → tie → q1: (1, .5625), lower
  #  4  [.5, .625]         .53125 (4/5)     .59375 (1)       → (1, .59375), upper [.5625, .625]
  #  5..10: both quarter points > .55 score Dice 1; ties keep q1 and move to the lower half:
  #  q1 = .578125, .5703125, .56640625, .564453125, .5634765625, .56298828125
  assert th.bisection_search(SCORES, LABELS, steps=1) == (1.0, 0.75)
  assert th.bisection_search(SCORES, LABELS, steps=3) == (1.0, 0.5625)
  assert th.bisection_search(SCORES, LABELS, steps=4) == (1.0, 0.59375)
  assert th.bisection_search(SCORES, LABELS) == (1.0, 0.56298828125)


def test_bisection_zero_range_becomes_unit_interval():
  scores = np.zeros(6, np.float32)
  labels = np.array([1, 0, 0, 0, 0, 0])
  # [0, 0] → [0, 1]; nothing is ever predicted (Dice 0 ≥ 0 keeps q1), bracket halves downwards
  assert th.bisection_search(scores, labels) == (0.0, 0.25 / 2 ** 9)


def _reference_search(x, y, val_range, max_steps=10, step=0, max_val=0, max_point=0):
  """Literal transcription of the reference's recursive `find_best_val` with its full-array Dice."""
  def dice(p, g):
    return (2 * np.sum(p * g)) / (np.sum(p) + np.sum(g))
  if step == max_steps:
    return max_val, max_point
  if val_range[0] == val_range[1]:
    val_range = (val_range[0], 1)
  bottom, top = val_range
  center = bottom + (top - bottom) * 0.5
  q_bottom = bottom + (top - bottom) * 0.25
  q_top = bottom + (top - bottom) * 0.75
  val_bottom, val_top = dice(x > q_bottom, y), dice(x > q_top, y)
  if val_bottom >= val_top:
    if val_bottom >= max_val:
      max_val, max_point = val_bottom, q_bottom
    return _reference_search(x, y, (bottom, center), max_steps, step + 1, max_val, max_point)
  if val_top >= max_val:
    max_val, max_point = val_top, q_top
  return _reference_search(x, y, (center, top), max_steps, step + 1, max_val, max_point)


def test_bisection_matches_reference_transcription():
  rng = np.random.default_rng(5)
  for i in range(6):
    labels = rng.random((12, 11, 10)) < 0.1
    scores = (rng.random(labels.shape) ** (1 + i) + 0.4 * labels * rng.random(labels.shape))
    scores = scores.astype(np.float32)
    ref = _reference_search(scores.ravel(), labels.ravel(), (0, float(np.max(scores))))
    got = th.bisection_search(scores, labels)
    assert got[0] == pytest.approx(ref[0], abs=1e-15)
    assert got[1] == pytest.approx(ref[1], abs=1e-15)


def test_exact_finds_optimum_that_bisection_misses():
  # 100 lesion voxels at 0.2, 20 negatives at 0.5, 1 lesion voxel at 1.0, 1000 negatives at 0.
  scores = np.r_[np.full(100, 0.2), np.full(20, 0.5), 1.0, np.zeros(1000)].astype(np.float32)
  labels = np.r_[np.ones(100), np.zeros(20), 1, np.zeros(1000)].astype(bool)
  # bisection: Dice(.25) = 2/(21+101) < Dice(.75) = 2/(1+101) → upper half; never goes below .2
  d_bis, t_bis = th.bisection_search(scores, labels)
  assert d_bis == pytest.approx(2 / 102) and t_bis > 0.5
  # exact: score > 0 predicts 121 voxels with 101 lesion: 202 / (121 + 101)
  assert th.exact_best_threshold(scores, labels) == pytest.approx((202 / 222, 0.0))


def _brute_best(scores, labels):
  best, best_t = -1.0, None
  below = np.nextafter(scores.min(), np.asarray(-np.inf, scores.dtype))  # everything predicted
  for t in np.r_[below, np.unique(scores)]:            # ascending; ≥ keeps the highest among ties
    p = scores > t
    den = p.sum() + labels.sum()
    d = 2 * np.sum(p & labels) / den if den else 0.0
    if d >= best:
      best, best_t = d, float(t)
  return best, best_t


def test_exact_matches_brute_force():
  rng = np.random.default_rng(6)
  for i in range(8):
    labels = rng.random(400) < 0.15
    scores = np.round(rng.random(400) + 0.3 * labels, 1 + i % 3).astype(np.float32)
    d, t = th.exact_best_threshold(scores, labels)
    bd, bt = _brute_best(scores, labels)
    assert d == pytest.approx(bd, abs=1e-15) and t == bt
    assert d >= th.bisection_search(scores, labels)[0] - 1e-15


def test_exact_edge_cases():
  assert th.exact_best_threshold(np.array([0.1, 0.5]), np.array([0, 0])) == (0.0, 0.5)
  # every score tied: predicting every voxel (Dice 2·2/(2+4)) is the only non-empty prediction,
  # with t the largest value below the score
  d, t = th.exact_best_threshold(np.full(4, 0.3), np.array([1, 0, 1, 0]))
  assert d == pytest.approx(2 / 3) and t == np.nextafter(0.3, -np.inf)
  assert th.exact_best_threshold(np.array([0.0, 1.0]), np.array([0, 1])) == (1.0, 0.0)


def test_exact_can_predict_every_voxel():
  # The lesion holds the lowest score: every voxel (Dice 2·3/(3+4) = 6/7) beats any threshold
  # at a score value (score > 0.1 predicts only the negative: Dice 0), so t is the largest
  # float32 below 0.1, and `score > t` (compared in float32) predicts everything.
  scores = np.array([0.1, 0.1, 0.1, 0.5], np.float32)
  labels = np.array([1, 1, 1, 0], bool)
  d, t = th.exact_best_threshold(scores, labels)
  assert d == pytest.approx(6 / 7)
  assert t == float(np.nextafter(np.float32(0.1), np.float32(-np.inf)))
  assert np.all(scores > np.float32(t))


def test_healthy_fpr_thresholds_hand():
  scores = np.arange(100, dtype=np.float32)              # 100 healthy voxels 0..99
  t = th.healthy_fpr_thresholds(scores, None)
  assert t == {0.01: 98.0, 0.05: 94.0, 0.1: 89.0}      # #{score > 98} = 1 = 1 % of 100, etc.
  mask = scores >= 50                                   # 50 brain voxels 50..99
  assert th.healthy_fpr_thresholds(scores, mask, fprs=(0.1,)) == {0.1: 94.0}


def test_healthy_fpr_thresholds_match_reference_roc_rule():
  rng = np.random.default_rng(7)
  vols = [np.round(rng.random((6, 5, 4)) ** 2, 2).astype(np.float32) for _ in range(3)]
  got = th.healthy_fpr_thresholds(vols, None)
  pooled = np.concatenate([v.ravel() for v in vols])
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")                      # no positive samples
    fpr, _, thr = skm.roc_curve(np.zeros(pooled.size, int), pooled, drop_intermediate=False)
  for f, t in got.items():
    assert t == pytest.approx(thr[np.argmax(fpr > f)])
    assert np.mean(pooled > t) <= f


def test_select_threshold_pools_volumes():
  rng = np.random.default_rng(8)
  scores = [rng.random((8, 7, 6)).astype(np.float32) for _ in range(3)]
  labels = [s + 0.3 * rng.random(s.shape) > 0.9 for s in scores]
  masks = [rng.random(s.shape) < 0.7 for s in scores]
  pooled_s = np.concatenate([s[m] for s, m in zip(scores, masks)])
  pooled_l = np.concatenate([lab[m] for lab, m in zip(labels, masks)])
  assert th.select_threshold(scores, labels, masks) == th.exact_best_threshold(pooled_s, pooled_l)
  grid_s = np.concatenate([s.ravel() for s in scores])
  grid_l = np.concatenate([lab.ravel() for lab in labels])
  assert (th.select_threshold(scores, labels, method="bisection", within_brain=False)
          == th.bisection_search(grid_s, grid_l))
  with pytest.raises(ValueError, match="mask_list"):
    th.select_threshold(scores, labels)
  with pytest.raises(ValueError, match="method"):
    th.select_threshold(scores, labels, masks, method="grid")


def test_ranked_scores_counts():
  r = th.RankedScores.from_arrays(SCORES, LABELS)
  assert r.count_above(0.55) == (2, 0)
  assert r.count_above(0.3) == (2, 1)
  assert r.dice_above(0.9) == pytest.approx(2 / 3)
  merged = th.RankedScores.merge(r, th.RankedScores.from_arrays(np.zeros(3), np.zeros(3)))
  assert (merged.n_pos, merged.n_neg) == (2, 6)


# ----------------------------------------------------------------------------- faithful arithmetic


def test_reference_arithmetic_float32_bracket_hand():
  # max = float32(0.1) = 0x1.99999Ap-4 (mantissa 0xCCCCCD, odd). Negatives at 0 and 0.05, lesion at
  # max. Step 1 on [0, max]: q1 = max/4 predicts {0.05, max} (Dice 2/3), q3 = 3·max/4 predicts {max}
  # (Dice 1) → τ = q3. In float64 3·max/4 = 0x1.3333338p-4 exactly (0.07500000111758709); in float32
  # 3·0xCCCCCD = 0x26666667 needs 26 bits: the tie 0x1.333333|8 rounds to even, 0x1.333334p-4.
  scores = np.array([0.0, 0.05, 0.1], np.float32)
  labels = np.array([0, 0, 1], bool)
  d64, t64 = th.bisection_search(scores, labels, steps=1)
  d32, t32 = th.bisection_search(scores, labels, steps=1, reference_arithmetic=True)
  assert d64 == d32 == 1.0
  assert t64 == float.fromhex("0x1.3333338p-4") == 0.07500000111758709
  assert t32 == float.fromhex("0x1.333334p-4") == 0.07500000298023224
  assert t32 == float(np.float32(t32))                  # τ is a float32 value


def _reference_search_f32(x, y, max_steps=10):
  """The transcription called as the reference did: bracket (0, np.max(x)) with x float32."""
  with np.errstate(invalid="ignore", divide="ignore"):  # 0/0 → NaN, as in the reference
    return _reference_search(x, y, (0, np.max(x)), max_steps)


def test_reference_arithmetic_matches_float32_transcription_bit_for_bit():
  rng = np.random.default_rng(5)
  differ = 0
  for i in range(6):
    labels = rng.random((12, 11, 10)) < 0.1
    scores = (rng.random(labels.shape) ** (1 + i) + 0.4 * labels * rng.random(labels.shape))
    scores = scores.astype(np.float32)
    ref = _reference_search_f32(scores.ravel(), labels.ravel())
    assert isinstance(np.max(scores) * 0.25, np.float32)  # NumPy keeps the bracket in float32
    assert th.bisection_search(scores, labels, reference_arithmetic=True) == ref
    differ += th.bisection_search(scores, labels)[1] != ref[1]
  assert differ >= 3                                     # the float64 bracket misses the last bits


def test_reference_arithmetic_empty_labels_nan_dice():
  # No lesion, all-zero map: [0, 0] → [0, 1]; nothing is ever predicted. The reference's 0/0 = NaN
  # loses every comparison (best stays (0, 0), the bracket climbs); the float64 search counts 0/0 as
  # 0, so q1 wins every tie and the bracket descends to 0.25/2⁹.
  scores, labels = np.zeros(5, np.float32), np.zeros(5, bool)
  assert _reference_search_f32(scores, labels) == (0.0, 0.0)
  assert th.bisection_search(scores, labels, reference_arithmetic=True) == (0.0, 0.0)
  assert th.bisection_search(scores, labels) == (0.0, 0.25 / 2 ** 9)


def test_select_threshold_reference_arithmetic():
  rng = np.random.default_rng(9)
  scores = [rng.random((8, 7, 6)).astype(np.float32) ** 3 for _ in range(3)]
  labels = [s + 0.3 * rng.random(s.shape) > 0.8 for s in scores]
  grid_s = np.concatenate([s.ravel() for s in scores])
  grid_l = np.concatenate([lab.ravel() for lab in labels])
  got = th.select_threshold(scores, labels, method="bisection", within_brain=False,
                            reference_arithmetic=True)
  assert got == _reference_search_f32(grid_s, grid_l)


# ----------------------------------------------------------------------------- non-finite maps


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_scores_raise_naming_the_volume(bad):
  scores = [np.full((3, 3, 2), 0.5, np.float32) for _ in range(2)]
  scores[1][1, 1, 0] = bad
  labels = [s > 0.6 for s in scores]
  with pytest.raises(th.NonFiniteScoreError, match=r"volume 'sub-02'.*1 (NaN|±Inf)"):
    th.select_threshold(scores, labels, method="exact", within_brain=False,
                        names=["sub-01", "sub-02"])
  with pytest.raises(th.NonFiniteScoreError, match="volume '#1'"):
    th.select_threshold(scores, labels, method="bisection", within_brain=False)
  with pytest.raises(ValueError, match="score map"):     # a ValueError subclass
    th.exact_best_threshold(scores[1], labels[1])
  with pytest.raises(th.NonFiniteScoreError, match="volume '#1'"):
    th.healthy_fpr_thresholds(scores)
  th.check_finite(scores[0], "fine")                     # finite: no error
  th.check_finite(np.array([1, 2]), "integers")
