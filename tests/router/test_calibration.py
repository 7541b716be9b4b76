"""Threshold calibration: the suggested threshold does on the data what it promises, with ties,
and with a bootstrap interval; ``tiergate thresholds suggest`` calibrates on rows the verifier
never trained on, prints, plots and fails with one-line errors."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from gateway.cli.main import main
from router.calibration import (
    CalibrationError,
    CostModel,
    OperatingPoint,
    bootstrap,
    check_target,
    measure,
    operating_points,
    suggest,
)
from verifiers.artifact import load_artifact
from verifiers.data import VerifierInput, read_examples

REPO = Path(__file__).resolve().parents[2]
REF_AUTO = REPO / "gateway" / "reference" / "verifiers" / "ref-auto"
CASCADE = CostModel("cascade", 10.0)


def labelled(seed: int, n: int = 200, levels: int = 7) -> tuple[list[float], list[bool],
                                                                   list[bool]]:
    """Scores with many ties (``levels`` distinct values), labels loosely tied to the score."""
    rng = random.Random(seed)
    scores = [rng.randrange(levels) / levels for _ in range(n)]
    small = [rng.random() > 0.3 + 0.5 * s for s in scores]
    large = [rng.random() < 0.8 for _ in scores]
    return scores, small, large


def applied(threshold: float, scores: list[float], small: list[bool],
            large: list[bool]) -> tuple[float, float]:
    """Share escalated and accuracy when the router escalates ``score >= threshold``."""
    s = np.asarray(scores)
    escalate = s >= threshold
    accuracy = np.where(escalate, large, small).mean()
    return float(escalate.mean()), float(accuracy)


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("target", [0.0, 0.1, 0.3, 0.45, 1.0])
def test_escalation_target_holds_on_the_data_with_ties(seed: int, target: float) -> None:
    scores, small, large = labelled(seed)
    points = operating_points(scores, small, large, CASCADE, (0.0, 1.0))
    chosen = suggest(points, escalation=target)
    share, accuracy = applied(chosen.threshold, scores, small, large)
    assert share <= target + 1e-12
    assert (share, accuracy) == pytest.approx((chosen.share, chosen.accuracy))
    # No threshold escalating at most the target does better on the data.
    for threshold in [*sorted(set(scores)), 1.0 + 1e-9]:
        other_share, other_accuracy = applied(threshold, scores, small, large)
        if other_share <= target:
            assert other_accuracy <= accuracy + 1e-12


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("target", [0.2, 0.5, 0.9])
def test_pgr_target_is_reached_with_the_least_escalation(seed: int, target: float) -> None:
    scores, small, large = labelled(seed)
    points = operating_points(scores, small, large, CASCADE, (0.0, 1.0))
    acc_small, acc_large = float(np.mean(small)), float(np.mean(large))
    try:
        chosen = suggest(points, pgr=target)
    except CalibrationError as exc:
        assert "unreachable" in str(exc)
        assert all((p.pgr or 0.0) < target for p in points)
        return
    share, accuracy = applied(chosen.threshold, scores, small, large)
    assert (accuracy - acc_small) / (acc_large - acc_small) >= target - 1e-12
    for threshold in [*sorted(set(scores)), 1.0 + 1e-9]:
        other_share, other_accuracy = applied(threshold, scores, small, large)
        if (other_accuracy - acc_small) / (acc_large - acc_small) >= target - 1e-12:
            assert other_share >= share - 1e-12


def test_points_cover_every_tie_group_and_thresholds_are_short() -> None:
    scores = [0.9, 0.9, 0.9, 0.52, 0.52, 0.1]
    small = [False, True, False, True, False, True]
    large = [True, True, True, False, True, True]
    points = operating_points(scores, small, large, CASCADE, (0.0, 1.0))
    assert [p.escalated for p in points] == [0, 3, 5, 6]
    assert [p.threshold for p in points] == [1.0, 0.9, 0.5, 0.0]
    assert points[0].accuracy == pytest.approx(3 / 6)
    assert points[1].accuracy == pytest.approx(5 / 6)
    assert points[1].pgr == pytest.approx((5 / 6 - 3 / 6) / (5 / 6 - 3 / 6))
    # cascade: 1 + share * ratio per request, relative to always-large (ratio)
    assert points[1].cost == pytest.approx((1 + 0.5 * 10) / 10)
    assert CostModel("prompt", 10).relative(0.5) == pytest.approx((0.5 + 5) / 10)


def test_targets_and_unreachable_ones_fail_clearly() -> None:
    point = OperatingPoint(0.5, 1, 2, 1.0, 1.0, 0.6)
    with pytest.raises(CalibrationError, match="exactly one target"):
        suggest([point])
    with pytest.raises(CalibrationError, match="exactly one target"):
        suggest([point], escalation=0.3, pgr=0.9)
    # Every score at the top of the range: no threshold can escalate fewer than all of them.
    tied = operating_points([1.0, 1.0], [True, False], [True, True], CASCADE, (0.0, 1.0))
    with pytest.raises(CalibrationError, match=r"unreachable.*100\.0%"):
        suggest(tied, escalation=0.5)
    same = operating_points([0.2, 0.8], [True, False], [False, True], CASCADE, (0.0, 1.0))
    with pytest.raises(CalibrationError, match="PGR is undefined"):
        suggest(same, pgr=0.5)


@pytest.mark.parametrize("seed", range(5))
def test_a_pgr_above_the_oracle_is_refused_from_the_labels(seed: int) -> None:
    rng = np.random.default_rng(seed)
    small = (rng.random(200) < 0.4).tolist()
    large = (rng.random(200) < 0.7).tolist()
    scores = rng.random(200).tolist()
    best = max(p.pgr or 0.0 for p in operating_points(scores, small, large, CASCADE, (0, 1)))
    oracle = (np.mean(np.array(small) | np.array(large)) - np.mean(small)) / (
        np.mean(large) - np.mean(small))
    assert best <= oracle + 1e-12  # no threshold of any verifier beats the oracle
    check_target(small, large, pgr=float(oracle))  # the oracle's own PGR: not refused early
    with pytest.raises(CalibrationError, match="even the oracle"):
        check_target(small, large, pgr=float(oracle) + 0.01)
    with pytest.raises(CalibrationError, match="PGR is undefined"):
        check_target(small, small, pgr=0.5)
    with pytest.raises(CalibrationError, match=r"must lie in \[0, 1\]"):
        check_target(small, large, escalation=1.5)


def test_cli_refuses_an_unreachable_target_before_scoring(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`--target-pgr 1.2` is answered from the calibration rows' labels: no row is scored
    first (scoring, one row at a time as the router does, is the slow part)."""
    data = write_rows(tmp_path / "rows.jsonl")
    assert main(["thresholds", "suggest", "--verifier", str(REF_AUTO), "--data",
                 str(data), "--target-pgr", "1.2"]) == 2
    err = capsys.readouterr().err
    assert "target PGR 1.20 is unreachable: even the oracle" in err
    assert "scoring" not in err


def write_rows(path: Path, n: int = 60) -> Path:
    """Reference-style rows (prompt, small answer with logprobs, labels) to score with ref-auto."""
    rng = random.Random(7)
    lines = []
    for i in range(n):
        a, b = rng.randrange(10, 1000), rng.randrange(10, 1000)
        answer = str(a + b)[::-1]
        wrong = rng.random() < 0.5
        text = answer[:-1] + "9" if wrong else answer
        lps = [round(-rng.random() * (3 if wrong else 0.3), 4) for _ in text] + [-0.01]
        lines.append(json.dumps({
            "id": f"r{i}", "request": {"prompt": f"rev({a}+{b})="},
            "small": {"text": text, "token_logprobs": lps}, "small_correct": not wrong,
            "large_correct": rng.random() < 0.9}))
    path.write_text("\n".join(lines) + "\n")
    return path


def test_cli_prints_plots_and_the_threshold_holds(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    data = write_rows(tmp_path / "rows.jsonl")
    png = tmp_path / "curve.png"
    code = main(["thresholds", "suggest", "--verifier", str(REF_AUTO), "--data", str(data),
                 "--target-escalation", "0.3", "--out", str(png)])
    out = capsys.readouterr().out
    assert code == 0
    assert "suggested" in out and "cost vs always-large" in out and "admin/routes/auto" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    code = main(["thresholds", "suggest", "--verifier", str(REF_AUTO), "--data", str(data),
                 "--target-escalation", "0.3", "--json"])
    payload = json.loads(capsys.readouterr().out)
    assert code == 0
    verifier = load_artifact(REF_AUTO)
    rows = read_examples(data).examples
    scores = [verifier.score(VerifierInput(r.prompt, r.small, None)) for r in rows]
    share, accuracy = applied(payload["threshold"], scores, [r.small_correct for r in rows],
                              [bool(r.large_correct) for r in rows])
    assert share <= 0.3
    assert payload["chosen"]["share"] == pytest.approx(share)
    assert payload["chosen"]["accuracy"] == pytest.approx(accuracy)
    assert payload["cost_model"] == {"mode": "cascade", "ratio": 10.0, "always_small": 0.1,
                                     "always_large": 1.0}


@pytest.mark.parametrize(("args", "message"), [
    (["--data", "missing.jsonl", "--target-escalation", "0.3"], "cannot read training data"),
    (["--target-pgr", "5"], "unreachable"),
    (["--target-escalation", "1.5"], "must lie in [0, 1]"),
    (["--target-escalation", "0.3", "--cost-ratio", "0"], "--cost-ratio must be positive"),
])
def test_cli_errors_are_one_line(args: list[str], message: str, tmp_path: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    data = write_rows(tmp_path / "rows.jsonl")
    argv = ["thresholds", "suggest", "--verifier", str(REF_AUTO)]
    argv += args if "--data" in args else ["--data", str(data), *args]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("tiergate: ") and message in err and "\n" not in err


@pytest.mark.parametrize("targets", [[], ["--target-escalation", "0.3", "--target-pgr", "0.9"]])
def test_cli_needs_exactly_one_target(targets: list[str], tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    data = write_rows(tmp_path / "rows.jsonl")
    with pytest.raises(SystemExit) as exit_info:
        main(["thresholds", "suggest", "--verifier", str(REF_AUTO), "--data", str(data),
              *targets])
    assert exit_info.value.code == 2
    assert "--target-escalation" in capsys.readouterr().err


def test_bootstrap_interval_brackets_the_point_and_narrows_with_rows() -> None:
    scores, small, large = labelled(3, n=400)
    point = measure(scores, small, large, 0.5, CASCADE)
    wide = bootstrap(scores[:80], small[:80], large[:80], 0.5)
    narrow = bootstrap(scores, small, large, 0.5)
    assert narrow.share[0] <= point.share <= narrow.share[1]
    assert narrow.accuracy[0] <= point.accuracy <= narrow.accuracy[1]
    assert narrow.share[1] - narrow.share[0] < wide.share[1] - wide.share[0]
    assert bootstrap(scores, small, large, 0.5) == narrow  # seeded: the same every time
    with pytest.raises(CalibrationError, match="resamples"):
        bootstrap(scores, small, large, 0.5, resamples=1)


@pytest.fixture(scope="module")
def trained_here(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A short-recipe verifier trained on reference-style rows, and its training file."""
    directory = tmp_path_factory.mktemp("trained")
    data = write_rows(directory / "pairs.jsonl", n=200)
    out = directory / "verifier"
    assert main(["verifier", "train", "--data", str(data), "--kind", "answer", "--recipe",
                 "short", "--out", str(out)]) == 0
    return out, data


def test_cli_calibrates_on_the_validation_split_of_the_training_file(
        trained_here: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    verifier, data = trained_here
    capsys.readouterr()
    assert main(["thresholds", "suggest", "--verifier", str(verifier), "--data", str(data),
                 "--target-escalation", "0.4", "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    validation = read_examples(data).split()[1]
    assert payload["rows"] == len(validation) < 200
    assert "validation split" in payload["calibration_rows"]
    low, high = payload["interval"]["share"]
    assert low <= payload["chosen"]["share"] <= high


def test_cli_refuses_training_rows_unless_allowed(trained_here: tuple[Path, Path],
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    verifier, data = trained_here
    capsys.readouterr()
    argv = ["thresholds", "suggest", "--verifier", str(verifier), "--data", str(data),
            "--target-escalation", "0.4", "--split", "all"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "training data" in err and "--allow-in-sample" in err and "\n" not in err
    assert main([*argv, "--allow-in-sample"]) == 0
    captured = capsys.readouterr()
    assert captured.err.startswith("WARNING: ") and "WARNING: in-sample" in captured.out


def test_cli_measures_a_given_threshold(tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    data = write_rows(tmp_path / "rows.jsonl")
    assert main(["thresholds", "suggest", "--verifier", str(REF_AUTO), "--data", str(data),
                 "--threshold", "0.2", "--bootstrap", "0", "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    verifier = load_artifact(REF_AUTO)
    rows = read_examples(data).examples
    scores = [verifier.score(VerifierInput(r.prompt, r.small, None)) for r in rows]
    share, accuracy = applied(0.2, scores, [r.small_correct for r in rows],
                              [bool(r.large_correct) for r in rows])
    assert payload["threshold"] == 0.2 and payload["interval"] is None
    assert (payload["chosen"]["share"], payload["chosen"]["accuracy"]) == \
        pytest.approx((share, accuracy))
