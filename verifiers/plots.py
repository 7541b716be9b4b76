"""PNG figures of a router evaluation (matplotlib, Agg backend, no display needed)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from verifiers.evaluation import EvalReport
from verifiers.metrics import RoutingCurve

STYLES = {"random": ("grey", "--"), "prompt-length": ("tab:olive", ":"),
          "small-confidence": ("tab:purple", ":"), "oracle": ("black", "-.")}


def plot_report(report: EvalReport, path: Path, title: str | None = None) -> Path:
    """Accuracy vs share escalated for every router (left) and the reliability of the
    verifier's ``P(small wrong)`` (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (curves, calibration) = plt.subplots(1, 2, figsize=(12, 5),
                                                 gridspec_kw={"width_ratios": [3, 2]})
    try:
        for name, curve in report.curves.items():
            color, style = STYLES.get(name, ("tab:blue", "-"))
            summary = report.router(name)
            label = name if math.isnan(summary.apgr) else f"{name} (APGR {summary.apgr:.3f})"
            curves.plot(100 * curve.share, 100 * curve.accuracy, style, color=color,
                        label=label, linewidth=1.8 if name == report.name else 1.2)
        for policy, share in (("always-small", 0.0), ("always-large", 1.0)):
            point = report.router(policy)
            if point.accuracy is not None:
                curves.scatter([100 * share], [100 * point.accuracy], zorder=3,
                               label=f"{policy} ({100 * point.accuracy:.1f}%)")
        curves.set_xlabel("requests escalated to the large model (%)")
        curves.set_ylabel("accuracy (%)")
        curves.set_title(title or f"routing curve ({report.n} requests)")
        curves.grid(alpha=0.3)
        curves.legend(fontsize=8, loc="lower right")
        calibration.plot([0, 1], [0, 1], "--", color="grey", linewidth=1)
        if report.reliability is not None:
            predicted, observed, counts = report.reliability
            mask = counts > 0
            calibration.plot(predicted[mask], observed[mask], "o-", color="tab:blue")
            for x, y, n in zip(predicted[mask], observed[mask], counts[mask], strict=True):
                calibration.annotate(str(int(n)), (float(x), float(y)), fontsize=7,
                                     textcoords="offset points", xytext=(3, -9))
            ece = report.router(report.name).ece
            calibration.set_title(f"P(small wrong) reliability (ECE {ece:.3f})"
                                  if not np.isnan(ece) else "P(small wrong) reliability")
        else:
            calibration.set_title("no probabilities to calibrate")
        calibration.set_xlabel("predicted P(small wrong)")
        calibration.set_ylabel("observed share wrong")
        calibration.set_xlim(0, 1)
        calibration.set_ylim(0, 1)
        calibration.grid(alpha=0.3)
        _write(figure, path)
    finally:
        plt.close(figure)
    return path


def plot_thresholds(path: Path, *, share: Sequence[float], accuracy: Sequence[float],
                    thresholds: Sequence[float], chosen: int, acc_small: float,
                    acc_large: float, curves: Mapping[str, RoutingCurve],
                    title: str) -> Path:
    """The operating points a threshold can reach (left: accuracy vs share escalated, with the
    expected curves of ``curves`` for comparison; right: share escalated and accuracy against
    the threshold), the ``chosen`` point marked on both."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 5))
    try:
        x, y = 100 * np.asarray(share), 100 * np.asarray(accuracy)
        for name, curve in curves.items():
            color, style = STYLES.get(name, ("tab:blue", "-"))
            left.plot(100 * curve.share, 100 * curve.accuracy, style, color=color,
                      linewidth=1.0, label=name)
        left.plot(x, y, ".", color="tab:blue", markersize=4, label="thresholds (points)")
        left.scatter([x[chosen]], [y[chosen]], s=90, color="tab:red", zorder=4,
                     label=f"suggested {thresholds[chosen]:g}: {x[chosen]:.1f}% escalated, "
                           f"{y[chosen]:.1f}%")
        for label, (px, py) in (("always-small", (0.0, acc_small)),
                                ("always-large", (100.0, acc_large))):
            left.scatter([px], [100 * py], zorder=3, label=f"{label} ({100 * py:.1f}%)")
        left.set_xlabel("requests escalated to the large model (%)")
        left.set_ylabel("accuracy (%)")
        left.set_title(title)
        left.grid(alpha=0.3)
        left.legend(fontsize=8, loc="lower right")
        # A threshold between two points' thresholds acts like the higher one ("pre" steps).
        order = np.argsort(np.asarray(thresholds))
        t = np.asarray(thresholds)[order]
        right.step(t, x[order], where="pre", color="tab:blue", label="escalated (%)")
        right.step(t, y[order], where="pre", color="tab:green", label="accuracy (%)")
        right.axvline(thresholds[chosen], color="tab:red", linestyle="--",
                      label=f"suggested threshold {thresholds[chosen]:g}")
        right.set_xlabel("threshold (escalate when score >= threshold)")
        right.set_ylabel("%")
        right.set_title("what each threshold does on this data")
        right.grid(alpha=0.3)
        right.legend(fontsize=8)
        _write(figure, path)
    finally:
        plt.close(figure)
    return path


def _write(figure: Any, path: Path) -> None:
    """Lay the figure out and write it as a PNG (making its folder)."""
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
