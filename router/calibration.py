"""Threshold calibration: which threshold gives a target escalation share or PGR on labelled data.

A route escalates a request when ``score >= threshold``. On a labelled data set (verifier
training rows: ``small_correct``, ``large_correct``) every distinct score ``u`` is one
**operating point**: the threshold that escalates exactly the rows scored ``>= u``. Rows with
equal scores always go together: no threshold splits a tie, so the points are the only
reachable escalation shares, and each one's accuracy is what the router really does on the
data (no interpolation, unlike the expected curve of :mod:`verifiers.metrics`).

The threshold of a point is the shortest decimal in ``(next lower score, u]``: it escalates
exactly the same rows, survives printing, and puts unseen scores between two groups on the
sides they are closest to. :func:`suggest` picks the point for a target:

- ``escalation`` ``e``: the most escalation with ``share <= e`` (the best accuracy within it,
  since accuracy is not monotone in the share, the best of all points ``<= e``);
- ``pgr`` ``p``: the least escalation whose PGR ``(acc - acc_small) / (acc_large - acc_small)``
  reaches ``p``.

**The promise and its uncertainty.** The chosen point is what the threshold did on these rows;
:func:`bootstrap` resamples the rows (with replacement, the threshold fixed) and gives the
percentile interval of its escalation share, accuracy and PGR: what the threshold can be
expected to do on traffic like these rows. The rows must be ones the verifier never trained on
(``tiergate thresholds suggest`` picks them, see :mod:`verifiers.holdout`): on its own training
rows a verifier looks better than it is, and so does every threshold chosen there.

**Cost model.** One small call costs 1, one large call ``ratio`` (e.g. the ratio of their
per-request price or GPU time). A ``prompt`` route pays ``(1 - s) + s * ratio`` per request at
escalation share ``s``; a ``cascade`` pays ``1 + s * ratio`` (the small model answers every
request first). Costs are reported relative to always-large (``ratio`` per request).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

FloatArray = NDArray[np.float64]
Mode = Literal["prompt", "cascade"]
PGR_UNDEFINED = ("PGR is undefined on this data: the small and the large model are equally "
                 "accurate; use --target-escalation")


class CalibrationError(ValueError):
    """A target that the data cannot meet, or data that cannot calibrate (no PGR defined).
    Offline only (``tiergate thresholds suggest``), never sent to a client."""


@dataclass(frozen=True, slots=True)
class CostModel:
    mode: Mode
    ratio: float
    """Cost of one large call in units of one small call."""

    def relative(self, share: float) -> float:
        """Cost per request at escalation ``share``, relative to always-large."""
        small = 1.0 if self.mode == "cascade" else 1.0 - share
        return (small + share * self.ratio) / self.ratio

    def describe(self) -> str:
        paid = ("the small model answers every request, escalated ones also go to the large"
                if self.mode == "cascade" else "one model answers each request")
        return f"{self.mode} ({paid}); one large call = {self.ratio:g} small calls"


@dataclass(frozen=True, slots=True)
class OperatingPoint:
    threshold: float
    """Escalate when ``score >= threshold``."""
    escalated: int
    n: int
    accuracy: float
    pgr: float | None
    cost: float
    """Cost per request relative to always-large."""

    @property
    def share(self) -> float:
        return self.escalated / self.n

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "share": self.share}


def _short_decimal(low: float, high: float) -> float:
    """The shortest decimal ``t`` with ``low < t <= high`` (``high`` itself if none is shorter)."""
    for places in range(0, 17):
        for candidate in (math.floor(high * 10**places) / 10**places,
                          round(high, places)):
            if low < candidate <= high:
                return candidate
    return high


def _arrays(scores: Sequence[float], small_correct: Sequence[bool],
            large_correct: Sequence[bool]) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Scores and both tiers' labels as float arrays of one non-zero length."""
    score = np.asarray(scores, dtype=np.float64)
    small = np.asarray(small_correct, dtype=np.float64)
    large = np.asarray(large_correct, dtype=np.float64)
    if len(score) == 0 or len(small) != len(score) or len(large) != len(score):
        raise CalibrationError("scores and labels need the same non-zero length")
    return score, small, large


def operating_points(scores: Sequence[float], small_correct: Sequence[bool],
                     large_correct: Sequence[bool], cost: CostModel,
                     score_range: tuple[float, float]) -> list[OperatingPoint]:
    """Every reachable operating point, from escalating nothing to escalating everything.

    The "escalate nothing" point exists only when some threshold in ``score_range`` lies above
    every score (a threshold must lie in the verifier's range)."""
    score, small, large = _arrays(scores, small_correct, large_correct)
    n = len(score)
    acc_small, acc_large = float(small.mean()), float(large.mean())
    gap = acc_large - acc_small

    def point(threshold: float) -> OperatingPoint:
        escalate = score >= threshold
        count = int(escalate.sum())
        accuracy = float((small[~escalate].sum() + large[escalate].sum()) / n)
        pgr = (accuracy - acc_small) / gap if gap != 0 else None
        return OperatingPoint(threshold, count, n, accuracy, pgr, cost.relative(count / n))

    low, high = score_range
    distinct = np.unique(score)[::-1]  # highest first
    points: list[OperatingPoint] = []
    if distinct[0] < high:
        points.append(point(_short_decimal(float(distinct[0]), high)))
    for index, value in enumerate(distinct):
        below = float(distinct[index + 1]) if index + 1 < len(distinct) else low - 1.0
        threshold = _short_decimal(below, float(value))
        points.append(point(max(threshold, low)))
    return points


def _one_target(escalation: float | None, pgr: float | None) -> Literal["escalation", "pgr"]:
    if (escalation is None) == (pgr is None):
        raise CalibrationError("give exactly one target: --target-escalation or --target-pgr")
    if escalation is None:
        return "pgr"
    if not 0.0 <= escalation <= 1.0:
        raise CalibrationError(f"--target-escalation must lie in [0, 1], got {escalation}")
    return "escalation"


def check_target(small_correct: Sequence[bool], large_correct: Sequence[bool], *,
                 escalation: float | None = None, pgr: float | None = None) -> None:
    """Refuse a target that no threshold can meet on these labels, from the labels alone —
    before any row is scored: an escalation share outside ``[0, 1]``, a PGR on data where it is
    undefined, or a PGR above the oracle's (escalating exactly the rows only the large model
    gets right: no router does better)."""
    if _one_target(escalation, pgr) == "escalation":
        return
    assert pgr is not None
    small = np.asarray(small_correct, dtype=bool)
    large = np.asarray(large_correct, dtype=bool)
    if not math.isfinite(pgr):
        raise CalibrationError(f"--target-pgr must be a number, got {pgr}")
    gap = float(large.mean() - small.mean()) if len(small) else 0.0
    if gap == 0:
        raise CalibrationError(PGR_UNDEFINED)
    oracle = (float((small | large).mean()) - float(small.mean())) / gap
    if gap > 0 and pgr > oracle + 1e-12:
        raise CalibrationError(
            f"target PGR {pgr:.2f} is unreachable: even the oracle (escalating exactly the rows "
            f"only the large model gets right) reaches {oracle:.3f} on this data")


def suggest(points: Sequence[OperatingPoint], *, escalation: float | None = None,
            pgr: float | None = None) -> OperatingPoint:
    """The operating point for exactly one target (see the module docstring)."""
    if _one_target(escalation, pgr) == "escalation":
        assert escalation is not None
        within = [p for p in points if p.share <= escalation + 1e-12]
        if not within:
            least = min(points, key=lambda p: p.share)
            raise CalibrationError(
                f"target escalation {escalation:.1%} is unreachable: the least any threshold "
                f"escalates on this data is {least.share:.1%} (tied scores go together)")
        return max(within, key=lambda p: (p.accuracy, p.share))
    assert pgr is not None
    if points[0].pgr is None:
        raise CalibrationError(PGR_UNDEFINED)
    reached = [p for p in points if p.pgr is not None and p.pgr >= pgr - 1e-12]
    if not reached:
        best = max(points, key=lambda p: p.pgr or 0.0)
        raise CalibrationError(
            f"target PGR {pgr:.2f} is unreachable: the best threshold on this data reaches "
            f"{best.pgr:.3f} at {best.share:.1%} escalated")
    return min(reached, key=lambda p: (p.escalated, -p.accuracy))


def measure(scores: Sequence[float], small_correct: Sequence[bool],
            large_correct: Sequence[bool], threshold: float, cost: CostModel) -> OperatingPoint:
    """What a given threshold does on labelled rows (the point it selects)."""
    score, small, large = _arrays(scores, small_correct, large_correct)
    n = len(score)
    escalate = score >= threshold
    count = int(escalate.sum())
    accuracy = float(np.where(escalate, large, small).mean())
    gap = float(large.mean() - small.mean())
    pgr = (accuracy - float(small.mean())) / gap if gap != 0 else None
    return OperatingPoint(threshold, count, n, accuracy, pgr, cost.relative(count / n))


@dataclass(frozen=True, slots=True)
class Interval:
    """Percentile bootstrap intervals of one threshold's figures (rows resampled)."""

    confidence: float
    resamples: int
    share: tuple[float, float]
    accuracy: tuple[float, float]
    pgr: tuple[float, float] | None
    """``None`` when PGR is undefined in too many resamples (equal accuracies)."""

    def to_json(self) -> dict[str, Any]:
        return {"confidence": self.confidence, "resamples": self.resamples,
                "share": list(self.share), "accuracy": list(self.accuracy),
                "pgr": None if self.pgr is None else list(self.pgr)}


def bootstrap(scores: Sequence[float], small_correct: Sequence[bool],
              large_correct: Sequence[bool], threshold: float, *, resamples: int = 1000,
              confidence: float = 0.95, seed: int = 0) -> Interval:
    """Intervals of the escalation share, accuracy and PGR at ``threshold`` (deterministic:
    ``seed``)."""
    if resamples < 2 or not 0.0 < confidence < 1.0:
        raise CalibrationError("the bootstrap needs >= 2 resamples and a confidence in (0, 1)")
    score, small, large = _arrays(scores, small_correct, large_correct)
    n = len(score)
    rows = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
    escalate = (score >= threshold)[rows]
    picked_small, picked_large = small[rows], large[rows]
    share = escalate.mean(axis=1)
    accuracy = np.where(escalate, picked_large, picked_small).mean(axis=1)
    gap = picked_large.mean(axis=1) - picked_small.mean(axis=1)
    defined = gap != 0
    tail = 100 * (1 - confidence) / 2

    def bounds(values: np.ndarray[Any, np.dtype[np.float64]]) -> tuple[float, float]:
        low, high = np.percentile(values, [tail, 100 - tail])
        return float(low), float(high)

    pgr = None
    if defined.mean() >= confidence:
        pgr = bounds((accuracy[defined] - picked_small.mean(axis=1)[defined]) / gap[defined])
    return Interval(confidence, resamples, bounds(share), bounds(accuracy), pgr)


@dataclass(frozen=True, slots=True)
class Suggestion:
    chosen: OperatingPoint
    points: list[OperatingPoint]
    acc_small: float
    acc_large: float
    cost: CostModel
    target: dict[str, float]
    interval: Interval | None = None

    def to_json(self) -> dict[str, Any]:
        return {"threshold": self.chosen.threshold, "chosen": self.chosen.to_json(),
                "target": self.target, "acc_small": self.acc_small,
                "acc_large": self.acc_large,
                "interval": None if self.interval is None else self.interval.to_json(),
                "cost_model": {"mode": self.cost.mode, "ratio": self.cost.ratio,
                               "always_small": 1.0 / self.cost.ratio, "always_large": 1.0},
                "points": [p.to_json() for p in self.points]}


def format_suggestion(suggestion: Suggestion, title: str) -> str:
    cost = suggestion.cost
    chosen = suggestion.chosen
    small_cost = 1.0 / cost.ratio
    label = "measured" if "threshold" in suggestion.target else "suggested"
    lines = [title, f"cost model: {cost.describe()}",
             f"{'':<24}{'threshold':>10}{'escalated':>11}{'accuracy':>10}{'PGR':>7}"
             f"{'cost vs always-large':>22}",
             f"{'always-small':<24}{'-':>10}{0.0:>11.1%}{suggestion.acc_small:>10.1%}"
             f"{0.0:>7.2f}{small_cost:>22.1%}",
             f"{'always-large':<24}{'-':>10}{1.0:>11.1%}{suggestion.acc_large:>10.1%}"
             f"{1.0:>7.2f}{1.0:>22.1%}",
             f"{label:<24}{chosen.threshold:>10g}{chosen.share:>11.1%}"
             f"{chosen.accuracy:>10.1%}"
             f"{'-' if chosen.pgr is None else format(chosen.pgr, '.2f'):>7}"
             f"{chosen.cost:>22.1%}"]
    target = ", ".join(f"{k} {v:g}" for k, v in suggestion.target.items())
    lines.append(f"target {target}: escalate when score >= {chosen.threshold:g} "
                 f"({chosen.escalated} of {chosen.n} rows)")
    interval = suggestion.interval
    if interval is not None:
        pgr = ("" if interval.pgr is None or chosen.pgr is None else
               f", PGR {chosen.pgr:.2f} [{interval.pgr[0]:.2f}, {interval.pgr[1]:.2f}]")
        lines.append(
            f"promise ({interval.confidence:.0%} bootstrap interval, {interval.resamples} "
            f"resamples of the {chosen.n} rows): escalated {chosen.share:.1%} "
            f"[{interval.share[0]:.1%}, {interval.share[1]:.1%}], accuracy "
            f"{chosen.accuracy:.1%} [{interval.accuracy[0]:.1%}, {interval.accuracy[1]:.1%}]"
            f"{pgr}")
    return "\n".join(lines)
