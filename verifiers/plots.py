"""PNG figures of a router evaluation (matplotlib, Agg backend, no display needed)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from verifiers.evaluation import EvalReport

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
        figure.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, dpi=110)
    finally:
        plt.close(figure)
    return path
