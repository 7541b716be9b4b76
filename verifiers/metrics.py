"""Router evaluation: accuracy vs share escalated, PGR, APGR, CPT, AUC, calibration error.

A router gives each request a score; escalating a request means the large model answers it.
Escalating the share ``s`` of requests with the highest scores gives the accuracy::

    acc(k) = (sum(small_correct) + sum over the k top-scored of (large_correct - small_correct)) / n

at ``s = k / n`` for every ``k = 0 .. n`` (the exact step curve, no coarse grid). With
``acc_small = acc(0)`` and ``acc_large = acc(n)``:

- ``PGR(k) = (acc(k) - acc_small) / (acc_large - acc_small)`` (undefined when the two are equal);
- ``APGR`` = trapezoid area under PGR over ``s`` in [0, 1]: a random router scores 0.5, the
  oracle more than 1 when the large model is sometimes wrong where the small one is right;
- ``CPT(x)`` = the least share ``k / n`` with ``PGR(k) >= x``.

Ties: requests with equal scores are escalated "together": inside a group of tied scores the
curve is the expectation over every order of the group (a straight line from the gain before
the group to the gain after it). The result does not depend on row order, and a constant score
gives exactly the expected curve of a random router.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

FloatArray = NDArray[np.float64]
ECE_BINS = 10


@dataclass(frozen=True, slots=True)
class RoutingCurve:
    """Accuracy and PGR after escalating the top ``k`` requests, for ``k = 0 .. n``."""

    share: FloatArray
    accuracy: FloatArray
    pgr: FloatArray
    acc_small: float
    acc_large: float

    @property
    def n(self) -> int:
        return len(self.share) - 1


def _bools(values: ArrayLike, name: str) -> FloatArray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional")
    return array


def routing_curve(scores: ArrayLike, small_correct: ArrayLike,
                  large_correct: ArrayLike) -> RoutingCurve:
    score = _bools(scores, "scores")
    small = _bools(small_correct, "small_correct")
    large = _bools(large_correct, "large_correct")
    n = len(score)
    if n == 0 or len(small) != n or len(large) != n:
        raise ValueError("scores, small_correct and large_correct need the same non-zero length")
    if np.isnan(score).any():
        raise ValueError("scores contain NaN")
    order = np.argsort(-score, kind="stable")
    sorted_scores = score[order]
    gain = (large - small)[order]
    # Cumulative gain at each group boundary, linear inside each group of tied scores.
    boundaries = np.flatnonzero(np.diff(sorted_scores) != 0) + 1
    starts = np.concatenate(([0], boundaries))
    ends = np.concatenate((boundaries, [n]))
    cumulative = np.concatenate(([0.0], np.cumsum(gain)))
    k = np.arange(n + 1, dtype=np.float64)
    group = np.searchsorted(ends, k, side="left")  # group that position k falls in
    group = np.minimum(group, len(starts) - 1)
    start = starts[group]
    end = ends[group]
    before = cumulative[start]
    after = cumulative[end]
    fraction = (k - start) / np.maximum(end - start, 1)
    total_gain = before + fraction * (after - before)
    acc_small = float(small.mean())
    acc_large = float(large.mean())
    accuracy = acc_small + total_gain / n
    gap = acc_large - acc_small
    pgr = (accuracy - acc_small) / gap if gap != 0 else np.full(n + 1, np.nan)
    return RoutingCurve(k / n, accuracy, pgr, acc_small, acc_large)


def apgr(curve: RoutingCurve) -> float:
    """Area under PGR over the escalated share (trapezoids on the exact per-request grid)."""
    if np.isnan(curve.pgr).any():
        return math.nan
    return float(np.trapezoid(curve.pgr, curve.share))


def cpt(curve: RoutingCurve, target: float) -> float:
    """Least share escalated whose PGR reaches ``target`` (NaN when PGR is undefined)."""
    if np.isnan(curve.pgr).any():
        return math.nan
    reached = np.flatnonzero(curve.pgr >= target - 1e-12)
    return float(curve.share[reached[0]]) if len(reached) else math.nan


def roc_auc(scores: ArrayLike, labels: ArrayLike) -> float:
    """Area under the ROC curve (Mann-Whitney with average ranks for ties); NaN for one class."""
    score = _bools(scores, "scores")
    label = _bools(labels, "labels") > 0.5
    positives = int(label.sum())
    negatives = len(label) - positives
    if positives == 0 or negatives == 0:
        return math.nan
    order = np.argsort(score, kind="stable")
    ranks = np.empty(len(score), dtype=np.float64)
    sorted_scores = score[order]
    boundaries = np.concatenate(([0], np.flatnonzero(np.diff(sorted_scores) != 0) + 1,
                                 [len(score)]))
    for start, end in itertools.pairwise(boundaries):
        ranks[order[start:end]] = (start + end + 1) / 2.0  # average 1-based rank
    rank_sum = float(ranks[label].sum())
    return (rank_sum - positives * (positives + 1) / 2.0) / (positives * negatives)


def expected_calibration_error(probabilities: ArrayLike, labels: ArrayLike,
                               bins: int = ECE_BINS) -> float:
    """ECE: sum over equal-width probability bins of ``|bin|/n * |mean(p) - mean(y)|``."""
    prob = _bools(probabilities, "probabilities")
    label = _bools(labels, "labels")
    if len(prob) == 0 or len(prob) != len(label):
        raise ValueError("probabilities and labels need the same non-zero length")
    if prob.min() < 0 or prob.max() > 1:
        return math.nan
    index = np.minimum((prob * bins).astype(np.int64), bins - 1)
    error = 0.0
    for b in range(bins):
        mask = index == b
        if mask.any():
            error += mask.mean() * abs(prob[mask].mean() - label[mask].mean())
    return float(error)


@dataclass(frozen=True, slots=True)
class RouterSummary:
    """The headline figures of one router (or a fixed policy) on one evaluation set."""

    name: str
    n: int
    acc_small: float
    acc_large: float
    apgr: float
    cpt50: float
    cpt80: float
    auc: float
    ece: float
    share: float | None = None
    """Fixed policies (always-small/large) have one operating point instead of a curve."""
    accuracy: float | None = None

    def row(self) -> dict[str, float | int | str | None]:
        return {"router": self.name, "n": self.n, "acc_small": self.acc_small,
                "acc_large": self.acc_large, "apgr": self.apgr, "cpt50": self.cpt50,
                "cpt80": self.cpt80, "auc": self.auc, "ece": self.ece,
                "share": self.share, "accuracy": self.accuracy}


def summarize(name: str, scores: ArrayLike, small_correct: ArrayLike, large_correct: ArrayLike,
              *, probabilities: bool = False) -> tuple[RouterSummary, RoutingCurve]:
    """APGR, CPT(50 %), CPT(80 %), AUC (for "small is wrong") and, for probability scores, ECE."""
    curve = routing_curve(scores, small_correct, large_correct)
    small_wrong = 1.0 - _bools(small_correct, "small_correct")
    ece = expected_calibration_error(scores, small_wrong) if probabilities else math.nan
    summary = RouterSummary(name, curve.n, curve.acc_small, curve.acc_large, apgr(curve),
                            cpt(curve, 0.5), cpt(curve, 0.8), roc_auc(scores, small_wrong), ece)
    return summary, curve


def fixed_policy(name: str, escalate: bool, small_correct: Sequence[float] | FloatArray,
                 large_correct: Sequence[float] | FloatArray) -> RouterSummary:
    """Always-small or always-large: one point (share 0 or 1), no curve."""
    small = _bools(small_correct, "small_correct")
    large = _bools(large_correct, "large_correct")
    acc_small, acc_large = float(small.mean()), float(large.mean())
    return RouterSummary(name, len(small), acc_small, acc_large, math.nan, math.nan, math.nan,
                         math.nan, math.nan, share=1.0 if escalate else 0.0,
                         accuracy=acc_large if escalate else acc_small)
