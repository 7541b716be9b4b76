"""Paired-bootstrap comparisons with the trivial baselines, and the leave-one-out slice prior."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from verifiers.data import Example
from verifiers.evaluation import evaluate_scores, format_report, write_csv
from verifiers.significance import paired_bootstrap, slice_prior


def rows(n: int = 300, seed: int = 1) -> list[Example]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        hard = rng.random() < 0.5
        out.append(Example(id=f"r{i}", request={"prompt": "x" * rng.randrange(5, 500)},
                           small_correct=rng.random() < (0.3 if hard else 0.9),
                           large_correct=rng.random() < 0.9, slice="hard" if hard else "easy"))
    return out


def test_slice_prior_is_leave_one_out() -> None:
    examples = [Example(id=str(i), request={"prompt": str(i)}, small_correct=s,
                        large_correct=True, slice=name)
                for i, (s, name) in enumerate([(False, "a"), (True, "a"), (False, "a"),
                                               (True, "b"), (True, "b"), (False, None)])]
    prior = slice_prior(examples)
    assert prior is not None
    # slice a: gains 1, 0, 1 -> each row sees the mean of the two others
    assert prior[:3].tolist() == [0.5, 1.0, 0.5]
    assert prior[3:5].tolist() == [0.0, 0.0]
    assert prior[5] == pytest.approx((3 - 1) / 5)  # no slice: every other row
    assert slice_prior(examples[:3]) is None  # one slice: no prior


def test_oracle_beats_random_and_a_router_does_not_beat_itself() -> None:
    examples = rows()
    small = np.array([e.small_correct for e in examples], dtype=np.float64)
    large = np.array([bool(e.large_correct) for e in examples], dtype=np.float64)
    oracle = paired_bootstrap("oracle", large - small, "random", np.zeros(len(small)), small,
                              large, resamples=200)
    assert oracle.significant and oracle.low > 0.2
    same = paired_bootstrap("a", small, "b", small.copy(), small, large, resamples=200)
    assert (same.difference, same.low, same.high) == (0.0, 0.0, 0.0)
    assert not same.significant and "NOT significantly better" in same.describe()


def test_report_says_when_the_verifier_is_not_better() -> None:
    examples = rows()
    length = np.array([len(e.prompt) for e in examples], dtype=np.float64)
    report = evaluate_scores(examples, length, name="length-again", bootstrap=200)
    names = [c.baseline for c in report.comparisons]
    assert names == ["prompt-length", "slice-prior"]
    assert not report.comparisons[0].significant
    prior = report.comparisons[1]
    assert prior.difference < 0 and not prior.significant  # the slice carries the signal
    text = format_report(report)
    assert "NOT significantly better than prompt-length, slice-prior" in text
    assert report.router("slice-prior").apgr > report.router("prompt-length").apgr
    assert evaluate_scores(examples, length).comparisons == []  # bootstrap off by default


def test_comparisons_csv(tmp_path: Path) -> None:
    examples = rows(120)
    small = np.array([e.small_correct for e in examples], dtype=np.float64)
    report = evaluate_scores(examples, -small, bootstrap=50)
    paths = write_csv(report, tmp_path)
    written = (tmp_path / "comparisons.csv").read_text().splitlines()
    assert tmp_path / "comparisons.csv" in paths
    assert written[0].startswith("router,baseline,difference,low,high")
    assert len(written) == 1 + len(report.comparisons)
