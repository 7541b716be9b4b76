"""The router evaluation of a verifier on labelled rows, with its baselines, in one report.

Routers compared on the same rows:

- the verifier (its routing score; ECE is that of its ``P(small wrong)``);
- ``random``: a constant score, which with the tie rule of :mod:`verifiers.metrics` is exactly
  the expected curve of a random router (APGR 0.5);
- ``always-small`` / ``always-large``: one operating point each (share 0 / 1);
- ``prompt-length``: escalate the longest prompts first;
- ``small-confidence``: escalate the answers with the lowest mean token logprob (only when every
  row's small answer carries logprobs);
- ``slice-prior``: escalate by the slice's escalation gain, leave-one-out (only when the rows
  carry at least two slices; :func:`verifiers.significance.slice_prior`);
- ``oracle``: escalate exactly where the large model is right and the small one wrong first,
  and where only the small one is right last.

With ``bootstrap`` resamples, the verifier's APGR is compared with each trivial baseline
(``prompt-length``, ``slice-prior``, ``small-confidence``) by a paired bootstrap
(:mod:`verifiers.significance`), and the report says when it is not significantly better.
"""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from verifiers.data import Example
from verifiers.errors import DataFormatError
from verifiers.features import mean_token_logprob
from verifiers.metrics import (
    FloatArray,
    RouterSummary,
    RoutingCurve,
    fixed_policy,
    summarize,
)
from verifiers.scoring import Verifier
from verifiers.significance import Comparison, paired_bootstrap, slice_prior

MIN_SLICE_ROWS = 20


@dataclass(slots=True)
class SliceRow:
    slice: str
    n: int
    acc_small: float
    acc_large: float
    apgr: float
    cpt50: float
    auc: float
    oracle_apgr: float


@dataclass(slots=True)
class EvalReport:
    name: str
    n: int
    routers: list[RouterSummary]
    curves: dict[str, RoutingCurve]
    slices: list[SliceRow] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    reliability: tuple[FloatArray, FloatArray, FloatArray] | None = None
    """Per probability bin: mean predicted P(small wrong), observed rate, row count."""
    comparisons: list[Comparison] = field(default_factory=list)
    """The verifier against each trivial baseline (paired bootstrap of the APGR difference)."""

    def router(self, name: str) -> RouterSummary:
        for summary in self.routers:
            if summary.name == name:
                return summary
        raise KeyError(name)


def labels_of(examples: Sequence[Example]) -> tuple[FloatArray, FloatArray]:
    missing = [e.id for e in examples if e.large_correct is None]
    if missing:
        raise DataFormatError(
            f"the routing evaluation needs 'large_correct' on every row; {len(missing)} rows "
            f"lack it (first: {missing[0]!r})")
    small = np.array([e.small_correct for e in examples], dtype=np.float64)
    large = np.array([bool(e.large_correct) for e in examples], dtype=np.float64)
    return small, large


def evaluate(verifier: Verifier, examples: Sequence[Example], *, name: str = "verifier",
             use_slices: bool = True, min_slice_rows: int = MIN_SLICE_ROWS,
             bootstrap: int = 0) -> EvalReport:
    """Score ``examples`` with ``verifier`` and compare it with every baseline (with
    ``bootstrap`` resamples: paired intervals against the trivial ones)."""
    if not examples:
        raise DataFormatError("no rows to evaluate")
    items = [e.input for e in examples]
    if not use_slices:
        items = [replace(item, slice=None) for item in items]
    predictions = verifier.predict_batch(items)
    return evaluate_scores(examples, predictions.score, predictions.p_small_wrong, name=name,
                           min_slice_rows=min_slice_rows, bootstrap=bootstrap)


TRIVIAL = ("prompt-length", "slice-prior", "small-confidence")
"""The baselines a verifier must beat to be worth its cost."""


def evaluate_scores(examples: Sequence[Example], scores: FloatArray,
                    p_small_wrong: FloatArray | None = None, *, name: str = "verifier",
                    min_slice_rows: int = MIN_SLICE_ROWS, bootstrap: int = 0) -> EvalReport:
    small, large = labels_of(examples)
    report = EvalReport(name, len(examples), [], {})
    values_of: dict[str, FloatArray] = {}

    def add(router: str, values: FloatArray, probabilities: FloatArray | None = None) -> None:
        values_of[router] = values
        summary, curve = summarize(router, values, small, large)
        if probabilities is not None:
            ece_summary, _ = summarize(router, probabilities, small, large, probabilities=True)
            summary = _with_ece(summary, ece_summary.ece)
        report.routers.append(summary)
        report.curves[router] = curve

    add(name, np.asarray(scores, dtype=np.float64), p_small_wrong)
    add("random", np.zeros(len(examples)))
    report.routers.append(fixed_policy("always-small", False, small, large))
    report.routers.append(fixed_policy("always-large", True, small, large))
    add("prompt-length", np.array([len(e.prompt) for e in examples], dtype=np.float64))
    confidences = [mean_token_logprob(e.input) for e in examples]
    present = [c for c in confidences if c is not None]
    if len(present) == len(examples):
        add("small-confidence", -np.array(present, dtype=np.float64))
    elif present:
        report.notes.append(f"small-confidence baseline skipped: only {len(present)} of "
                            f"{len(examples)} small answers carry token logprobs")
    else:
        report.notes.append("small-confidence baseline skipped: the small answers carry no "
                            "token logprobs")
    prior = slice_prior(examples)
    if prior is not None:
        add("slice-prior", prior)
    add("oracle", large - small)
    if p_small_wrong is not None:
        report.reliability = reliability(p_small_wrong, 1.0 - small)
    report.slices = slice_rows(examples, np.asarray(scores, dtype=np.float64), small, large,
                               min_slice_rows)
    if math.isnan(report.routers[0].apgr):
        report.notes.append("PGR is undefined: the small and large models are equally accurate "
                            "on these rows")
    elif bootstrap:
        for baseline in TRIVIAL:
            if baseline in values_of:
                report.comparisons.append(paired_bootstrap(
                    name, values_of[name], baseline, values_of[baseline], small, large,
                    resamples=bootstrap))
    return report


def _with_ece(summary: RouterSummary, ece: float) -> RouterSummary:
    return RouterSummary(summary.name, summary.n, summary.acc_small, summary.acc_large,
                         summary.apgr, summary.cpt50, summary.cpt80, summary.auc, ece)


def slice_rows(examples: Sequence[Example], scores: FloatArray, small: FloatArray,
               large: FloatArray, min_rows: int) -> list[SliceRow]:
    groups: dict[str, list[int]] = defaultdict(list)
    for index, example in enumerate(examples):
        groups[example.slice or "-"].append(index)
    if len(groups) < 2:
        return []
    rows = []
    for slice_name in sorted(groups):
        rows_of = np.array(groups[slice_name])
        if len(rows_of) < min_rows:
            continue
        part_small, part_large = small[rows_of], large[rows_of]
        summary, _ = summarize(slice_name, scores[rows_of], part_small, part_large)
        oracle, _ = summarize("oracle", part_large - part_small, part_small, part_large)
        rows.append(SliceRow(slice_name, len(rows_of), summary.acc_small, summary.acc_large,
                             summary.apgr, summary.cpt50, summary.auc, oracle.apgr))
    return rows


def reliability(probabilities: FloatArray, labels: FloatArray, bins: int = 10
                ) -> tuple[FloatArray, FloatArray, FloatArray]:
    index = np.minimum((np.clip(probabilities, 0, 1) * bins).astype(np.int64), bins - 1)
    predicted = np.full(bins, np.nan)
    observed = np.full(bins, np.nan)
    counts = np.zeros(bins)
    for b in range(bins):
        mask = index == b
        counts[b] = mask.sum()
        if mask.any():
            predicted[b] = probabilities[mask].mean()
            observed[b] = labels[mask].mean()
    return predicted, observed, counts


def _fmt(value: float | None, percent: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{100 * value:.1f}%" if percent else f"{value:.3f}"


def format_report(report: EvalReport, title: str | None = None) -> str:
    lines = [title or f"router evaluation on {report.n} rows"]
    first = report.routers[0]
    lines.append(f"accuracy: small {_fmt(first.acc_small, True)}, large "
                 f"{_fmt(first.acc_large, True)}")
    header = (f"{'router':<18}{'APGR':>8}{'CPT(50%)':>10}{'CPT(80%)':>10}{'AUC':>8}"
              f"{'ECE':>8}{'share':>8}{'acc':>8}")
    lines += [header, "-" * len(header)]
    for s in report.routers:
        lines.append(f"{s.name:<18}{_fmt(s.apgr):>8}{_fmt(s.cpt50, True):>10}"
                     f"{_fmt(s.cpt80, True):>10}{_fmt(s.auc):>8}{_fmt(s.ece):>8}"
                     f"{_fmt(s.share, True):>8}{_fmt(s.accuracy, True):>8}")
    if report.slices:
        lines.append("")
        lines.append(f"{'slice':<40}{'n':>6}{'small':>8}{'large':>8}{'APGR':>8}{'CPT50':>8}"
                     f"{'AUC':>8}{'oracle':>8}")
        for row in report.slices:
            lines.append(f"{row.slice[:39]:<40}{row.n:>6}{_fmt(row.acc_small, True):>8}"
                         f"{_fmt(row.acc_large, True):>8}{_fmt(row.apgr):>8}"
                         f"{_fmt(row.cpt50, True):>8}{_fmt(row.auc):>8}"
                         f"{_fmt(row.oracle_apgr):>8}")
    if report.comparisons:
        lines.append("")
        lines.append(f"against the trivial baselines (APGR difference, "
                     f"{report.comparisons[0].confidence:.0%} paired bootstrap interval):")
        lines += [f"  {c.describe()}" for c in report.comparisons]
        weak = [c.baseline for c in report.comparisons if not c.significant]
        if weak:
            lines.append(f"  => {report.name} is NOT significantly better than "
                         f"{', '.join(weak)} on these {report.n} rows")
    lines += [f"note: {note}" for note in report.notes]
    return "\n".join(lines)


def write_csv(report: EvalReport, out: Path) -> list[Path]:
    """``summary.csv`` (one row per router), ``curve.csv`` (accuracy and PGR of every router at
    every escalation share) and ``slices.csv`` (one row per slice of at least
    ``min_slice_rows`` rows; only its header when no slice has that many): always all
    three, so a script can read them."""
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "summary.csv", out / "curve.csv"]
    with paths[0].open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        rows = [s.row() for s in report.routers]
        writer.writerow(list(rows[0]))
        for row in rows:
            writer.writerow([_cell(v) for v in row.values()])
    names = list(report.curves)
    first = report.curves[names[0]]
    with paths[1].open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["escalated", "share", *(f"accuracy_{n}" for n in names),
                         *(f"pgr_{n}" for n in names)])
        for k in range(first.n + 1):
            writer.writerow([k, _cell(first.share[k]),
                             *(_cell(report.curves[n].accuracy[k]) for n in names),
                             *(_cell(report.curves[n].pgr[k]) for n in names)])
    if report.comparisons:
        paths.append(out / "comparisons.csv")
        with paths[-1].open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            rows_out = [c.row() for c in report.comparisons]
            writer.writerow(list(rows_out[0]))
            for comparison in rows_out:
                writer.writerow([_cell(v) for v in comparison.values()])
    paths.append(out / "slices.csv")
    with paths[-1].open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["slice", "n", "acc_small", "acc_large", "apgr", "cpt50", "auc",
                         "oracle_apgr"])
        for s in report.slices:
            writer.writerow([s.slice, s.n, *(_cell(v) for v in (
                s.acc_small, s.acc_large, s.apgr, s.cpt50, s.auc, s.oracle_apgr))])
    return paths


def _cell(value: object) -> object:
    if isinstance(value, float | np.floating):
        return "" if math.isnan(value) else f"{float(value):.6f}"
    return "" if value is None else value
