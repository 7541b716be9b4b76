"""``tiergate collect``: training rows from the reference pair served by the real engine, that
``tiergate verifier train`` accepts; the pair-to-row seam; clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from canary.shadow import ShadowLog, ShadowPair
from gateway.cli.main import main
from gateway.evals.graders import ExactGrader
from gateway.evals.tasksets import load_taskset, save_taskset
from gateway.kernel.generation import (
    ChoiceResult,
    GenerationRequest,
    GenerationResult,
    SamplingParams,
    TokenLogprob,
    TopLogprob,
    Usage,
)
from gateway.kernel.modeltuple import ModelTuple
from gateway.verifier_data import Pair, pair_row
from router.policy import verifier_input
from verifiers.artifact import load_artifact
from verifiers.data import read_examples

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "deploy" / "local" / "tiergate.toml"
TRAIN = REPO / "gateway" / "reference" / "tasksets" / "reference-train.jsonl"


@pytest.fixture(scope="module")
def spread_taskset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every 15th item of the reference train set: two per slice, easy and hard ones."""
    items = load_taskset(TRAIN)[::15]
    path = tmp_path_factory.mktemp("tasks") / "spread.jsonl"
    save_taskset(path, items)
    return path


@pytest.fixture(scope="module")
def collected(spread_taskset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("collect") / "pairs.jsonl"
    code = main(["collect", "--config", str(CONFIG), "--task-set", str(spread_taskset),
                 "--small", "ref-small-int8", "--large", "ref-large", "--out", str(out),
                 "--limit", "20", "--concurrency", "2"])
    assert code == 0
    return out


def test_collect_writes_graded_rows_with_logprobs(collected: Path, spread_taskset: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    items = {item.id: item for item in load_taskset(spread_taskset)[:20]}
    rows = read_examples(collected, strict=True).examples
    assert [row.id for row in rows] == list(items)
    for row in rows:
        item = items[row.id]
        assert row.request == {"prompt": item.prompt}
        assert row.slice == item.slice
        assert row.small is not None and row.large is not None
        assert row.small.token_logprobs and all(lp <= 0 for lp in row.small.token_logprobs)
        assert len(row.small.token_logprobs) <= item.max_tokens
        assert row.small_correct == (row.small.text.strip() == item.answer)
        assert row.large_correct == (row.large.text.strip() == item.answer)
    # The reference pair differs on this spread: the large model is right more often.
    assert sum(bool(r.large_correct) for r in rows) > sum(r.small_correct for r in rows)


def test_verifier_train_accepts_collected_rows(collected: Path, tmp_path: Path) -> None:
    out = tmp_path / "verifier"
    code = main(["verifier", "train", "--data", str(collected), "--kind", "answer",
                 "--recipe", "short", "--out", str(out), "--validation", str(collected)])
    assert code == 0
    verifier = load_artifact(out)
    assert verifier.kind == "answer"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["training"]["rows"]["train"] == 20


def _result(text: str, logprobs: list[float]) -> GenerationResult:
    tokens = [TokenLogprob(c, lp, top=[TopLogprob(c, lp), TopLogprob("x", lp - 2)])
              for c, lp in zip(text, logprobs, strict=True)]
    return GenerationResult(model=ModelTuple(name="m", engine="test"), usage=Usage(1, len(text)),
                            choices=[ChoiceResult(0, text, "stop", logprobs=tokens)])


def test_pair_row_is_what_the_router_sees() -> None:
    request = GenerationRequest(request_id="r", kind="completion",
                                sampling=SamplingParams(temperature=0.0, logprobs=0),
                                prompt="rev(12+34)=")
    small, large = _result("64", [-0.1, -0.7]), _result("46", [-0.01, -0.02])
    grader = ExactGrader()
    row = pair_row(Pair("p1", request, small, large, lambda text: grader.grade(text, "64"),
                        "add/2"))
    assert row.input.answer == verifier_input(request, small).answer
    assert row.input.prompt == verifier_input(request, small).prompt == "rev(12+34)="
    assert (row.small_correct, row.large_correct, row.slice) == (True, False, "add/2")
    assert row.small is not None and row.small.top_logprobs == ((-0.1, -2.1), (-0.7, -2.7))
    alone = pair_row(Pair("p2", request, small, None, lambda text: grader.grade(text, "64")))
    assert alone.large is None and alone.large_correct is None
    assert "large_correct" not in alone.to_json()


@pytest.mark.parametrize(("args", "message"), [
    (["--task-set", "missing.jsonl", "--small", "ref-small-int8"], "cannot read task set"),
    (["--task-set", str(TRAIN)], "collect needs --small"),
    (["--task-set", str(TRAIN), "--small", "nope"], "--small: no model 'nope'"),
    (["--task-set", str(TRAIN), "--route", "nope"], "--route: no route 'nope'"),
    (["--task-set", str(TRAIN), "--small", "ref-small-int8", "--limit", "0"], "--limit"),
])
def test_collect_errors_are_one_line(args: list[str], message: str, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["collect", "--config", str(CONFIG), "--out", str(tmp_path / "o.jsonl"), *args])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("tiergate: ") and message in err and "\n" not in err
    assert not (tmp_path / "o.jsonl").exists()


def _shadow_pair(request_id: str, prompt: str, small_text: str, large_text: str,
                 live_is_small: bool = True) -> ShadowPair:
    request = GenerationRequest(request_id=request_id, kind="completion",
                                sampling=SamplingParams(temperature=0.0), prompt=prompt)
    small = _result(small_text, [-0.5] * len(small_text))
    large = _result(large_text, [-0.1] * len(large_text))
    small.model = ModelTuple(name="ref-small-int8", engine="test")
    large.model = ModelTuple(name="ref-large", engine="test")
    live, shadow = (small, large) if live_is_small else (large, small)
    return ShadowPair.of(request, "auto", "tier", live, shadow)


def test_collect_from_shadow_pairs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    shadow_dir = tmp_path / "shadow"
    ShadowLog(shadow_dir).append([
        _shadow_pair("s1", "rev(12+34)=", "64", "64"),
        _shadow_pair("s2", "rev(99+99)=", "891", "891 ", live_is_small=False),
        _shadow_pair("s3", "sort(dcba)=", "abdc", "abcd"),
    ])
    out = tmp_path / "rows.jsonl"
    code = main(["collect", "--config", str(CONFIG), "--from-shadow", str(shadow_dir),
                 "--route", "auto", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    rows = {row.id: row for row in read_examples(out).examples}
    # The large answer is the reference: the small one agrees (exact, stripped) or not.
    assert {i: r.small_correct for i, r in rows.items()} == {"s1": True, "s2": True, "s3": False}
    assert all(r.large_correct is None and r.slice == "shadow:auto" for r in rows.values())
    assert rows["s3"].small is not None and rows["s3"].small.text == "abdc"
    assert rows["s3"].input.prompt == "sort(dcba)="
    assert rows["s2"].small is not None and rows["s2"].small.token_logprobs == (-0.5,) * 3
    # A grader from the command line; an empty or unrelated log is a one-line error.
    numeric = tmp_path / "numeric.jsonl"
    assert main(["collect", "--config", str(CONFIG), "--from-shadow", str(shadow_dir),
                 "--small", "ref-small-int8", "--large", "ref-large", "--out", str(numeric),
                 "--grader", '{"type": "numeric"}']) == 0
    assert main(["collect", "--config", str(CONFIG), "--from-shadow", str(tmp_path / "none"),
                 "--route", "auto", "--out", str(tmp_path / "x.jsonl")]) == 2
    assert "no shadow pairs" in capsys.readouterr().err
    assert main(["collect", "--config", str(CONFIG), "--from-shadow", str(shadow_dir),
                 "--route", "auto", "--out", str(tmp_path / "x.jsonl"),
                 "--grader", '{"type": "nope"}']) == 2
    assert "unknown grader type" in capsys.readouterr().err
