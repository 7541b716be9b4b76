"""Is a verifier better than a trivial router, beyond the noise of the rows it is measured on?

A verifier's APGR on a few hundred rows moves by a few hundredths with the rows drawn, and a
trivial router (longest prompts first; the per-slice escalation gain) is often close: on MMLU
with subject labels the verifier (0.734) was within noise of the per-subject prior (0.716).
:func:`paired_bootstrap` resamples the rows (the same resample for both routers) and gives the
percentile interval of the APGR difference; a verifier is **significantly better** than a
baseline when the whole interval lies above 0.

:func:`slice_prior` is the per-slice baseline without training data: each row's score is the
mean gain of escalating (``large_correct - small_correct``) over the *other* rows of its slice
(leave-one-out, so a row never sees its own label).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from verifiers.data import Example
from verifiers.metrics import FloatArray, apgr, routing_curve

RESAMPLES = 1000
CONFIDENCE = 0.95


@dataclass(frozen=True, slots=True)
class Comparison:
    """APGR of ``router`` minus that of ``baseline`` on the same rows, with its interval."""

    router: str
    baseline: str
    difference: float
    low: float
    high: float
    confidence: float
    resamples: int

    @property
    def significant(self) -> bool:
        """The router is better than the baseline beyond the noise (interval above 0)."""
        return self.low > 0.0

    def describe(self) -> str:
        verdict = ("significantly better" if self.significant else
                   "significantly worse" if self.high < 0.0 else
                   "NOT significantly better")
        return (f"{self.router} - {self.baseline}: APGR {self.difference:+.3f} "
                f"[{self.low:+.3f}, {self.high:+.3f}] ({self.confidence:.0%} paired bootstrap, "
                f"{self.resamples} resamples): {verdict}")

    def row(self) -> dict[str, object]:
        return {"router": self.router, "baseline": self.baseline,
                "difference": self.difference, "low": self.low, "high": self.high,
                "confidence": self.confidence, "resamples": self.resamples,
                "significant": self.significant}


def slice_prior(examples: Sequence[Example]) -> FloatArray | None:
    """Leave-one-out per-slice escalation gain; ``None`` unless at least two slices are set.
    Rows without a slice get the leave-one-out gain over every row."""
    groups: dict[str | None, list[int]] = defaultdict(list)
    for index, example in enumerate(examples):
        groups[example.slice].append(index)
    if len([name for name in groups if name is not None]) < 2:
        return None
    gain = np.array([float(bool(e.large_correct)) - float(e.small_correct) for e in examples])
    total = gain.sum()
    n = len(gain)
    scores = np.zeros(n)
    for name, rows in groups.items():
        members = np.array(rows)
        if name is None or len(members) < 2:
            scores[members] = (total - gain[members]) / max(n - 1, 1)
        else:
            scores[members] = (gain[members].sum() - gain[members]) / (len(members) - 1)
    return scores


def paired_bootstrap(router: str, scores: FloatArray, baseline: str,
                     baseline_scores: FloatArray, small: FloatArray, large: FloatArray, *,
                     resamples: int = RESAMPLES, confidence: float = CONFIDENCE,
                     seed: int = 0) -> Comparison:
    """APGR(router) - APGR(baseline) with a percentile interval over paired row resamples
    (resamples where PGR is undefined — equal accuracies — are skipped)."""
    def area(values: FloatArray, rows: FloatArray | None = None) -> float:
        if rows is None:
            return apgr(routing_curve(values, small, large))
        index = rows.astype(np.int64)
        return apgr(routing_curve(values[index], small[index], large[index]))

    difference = area(scores) - area(baseline_scores)
    rng = np.random.default_rng(seed)
    n = len(scores)
    differences = []
    for _ in range(resamples):
        rows = rng.integers(0, n, size=n).astype(np.float64)
        value = area(scores, rows) - area(baseline_scores, rows)
        if np.isfinite(value):
            differences.append(value)
    tail = 100 * (1 - confidence) / 2
    if differences:
        low, high = np.percentile(differences, [tail, 100 - tail])
    else:
        low = high = float("nan")
    return Comparison(router, baseline, float(difference), float(low), float(high),
                      confidence, len(differences))
