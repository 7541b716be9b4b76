"""``tiergate verifier train | eval | import-routellm`` through their parser, end to end on
subsets of the copied RouteLLM data."""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np
import pytest

from verifiers.artifact import MANIFEST_FILE, MODEL_FILE, load_artifact
from verifiers.commands import add_commands
from verifiers.data import Example, read_examples, split_examples, write_examples
from verifiers.evaluation import evaluate
from verifiers.metrics import summarize
from verifiers.scoring import Verifier

ROUTELLM = Path(__file__).resolve().parents[2] / "benchmarks" / "data" / "routellm"


def run(argv: list[str]) -> int:
    """Parse like ``tiergate`` does (a ``common`` parent with --config) and call the handler."""
    parser = argparse.ArgumentParser(prog="tiergate")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", type=Path, default=argparse.SUPPRESS)
    add_commands(parser.add_subparsers(dest="command", required=True), common)
    args = parser.parse_args(argv)
    result: int = args.handler(args, None)
    return result


@pytest.fixture(scope="module")
def gsm8k_file(tmp_path_factory: pytest.TempPathFactory,
               gsm8k_split: tuple[list[Example], list[Example]]) -> Path:
    train, validation = gsm8k_split
    path = tmp_path_factory.mktemp("data") / "gsm8k.jsonl"
    write_examples(path, train[:240] + validation[:80])
    with path.open("a") as handle:
        handle.write('{"id": "broken", "request": \n')
    return path


@pytest.fixture(scope="module")
def answer_artifact(gsm8k_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("artifact") / "gsm8k-answer"
    assert run(["verifier", "train", "--data", str(gsm8k_file), "--kind", "answer",
                "--out", str(out)]) == 0
    return out


def test_train_writes_a_versioned_artifact(answer_artifact: Path, gsm8k_file: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    manifest = json.loads((answer_artifact / MANIFEST_FILE).read_text())
    assert (answer_artifact / MODEL_FILE).is_file()
    assert manifest["training"]["rows"] == {"train": 240, "validation": 80, "skipped": 1}
    assert manifest["training"]["data"] == "gsm8k.jsonl"
    assert len(manifest["training"]["sha256"]) == 64
    routers = {r["router"]: r for r in manifest["validation"]["routers"]}
    assert set(routers) >= {"verifier", "random", "oracle", "prompt-length", "always-small"}
    assert routers["random"]["apgr"] == pytest.approx(0.5)
    assert routers["always-small"]["apgr"] is None  # NaN is written as null


def test_eval_writes_csv_and_png_matching_the_metrics(answer_artifact: Path, gsm8k_file: Path,
                                                      tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]
                                                      ) -> None:
    out = tmp_path / "eval"
    code = run(["verifier", "eval", "--verifier", str(answer_artifact), "--data",
                str(gsm8k_file), "--split", "validation", "--out", str(out)])
    printed = capsys.readouterr()
    assert code == 0
    assert "skipped 1 malformed rows" in printed.err
    verifier = load_artifact(answer_artifact)
    assert verifier.id in printed.out and "APGR" in printed.out
    assert (out / "routing_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    _, validation = split_examples(read_examples(gsm8k_file).examples)
    assert len(validation) == 80
    small = np.array([e.small_correct for e in validation], dtype=float)
    large = np.array([bool(e.large_correct) for e in validation], dtype=float)
    scores = verifier.score_batch([e.input for e in validation])
    expected, curve = summarize("v", scores, small, large)
    with (out / "summary.csv").open() as handle:
        rows = {row["router"]: row for row in csv.DictReader(handle)}
    ours = rows[verifier.id]
    for key in ("apgr", "cpt50", "cpt80", "auc", "acc_small", "acc_large"):
        assert float(ours[key]) == pytest.approx(getattr(expected, key), abs=1e-6)
    assert f"{expected.apgr:.3f}" in printed.out
    assert float(rows["random"]["apgr"]) == pytest.approx(0.5)
    assert float(rows["always-large"]["accuracy"]) == pytest.approx(large.mean())
    with (out / "curve.csv").open() as handle:
        points = list(csv.DictReader(handle))
    assert len(points) == 81
    accuracy = [float(p[f"accuracy_{verifier.id}"]) for p in points]
    np.testing.assert_allclose(accuracy, curve.accuracy, atol=1e-6)
    assert float(points[0]["accuracy_oracle"]) == pytest.approx(small.mean())
    # slices.csv is always written, one row per slice of at least 20 rows (maybe none)
    with (out / "slices.csv").open() as handle:
        sliced = list(csv.reader(handle))
    assert sliced[0][:2] == ["slice", "n"]
    assert [row[1] for row in sliced[1:]] == [str(s.n) for s in evaluate(
        verifier, validation).slices]


def test_prompt_verifier_cli_with_slices(tmp_path: Path,
                                         mmlu_split: tuple[list[Example], list[Example]],
                                         capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "mmlu.jsonl"
    train, validation = mmlu_split
    write_examples(data, train[:700] + validation[:300])
    out = tmp_path / "mmlu-prompt"
    assert run(["verifier", "train", "--data", str(data), "--kind", "prompt", "--out",
                str(out), "--target", "small-wrong"]) == 0
    assert json.loads((out / MANIFEST_FILE).read_text())["score"]["name"] == "p_small_wrong"
    assert run(["verifier", "eval", "--verifier", str(out), "--data", str(data), "--split",
                "validation", "--out", str(tmp_path / "eval"), "--no-slices"]) == 0
    with (tmp_path / "eval" / "slices.csv").open() as handle:
        slices = list(csv.DictReader(handle))
    assert slices and all(int(row["n"]) >= 20 for row in slices)
    assert "ECE" in capsys.readouterr().out


def test_import_routellm(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "gsm8k.jsonl"
    assert run(["verifier", "import-routellm", "--root", str(ROUTELLM), "--task", "gsm8k",
                "--out", str(out)]) == 0
    assert "10 contaminated prompts dropped" in capsys.readouterr().out
    assert len(read_examples(out, strict=True).examples) == 1067


def test_errors_are_one_line_and_exit_2(tmp_path: Path, gsm8k_file: Path,
                                        mmlu_split: tuple[list[Example], list[Example]],
                                        capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["verifier", "eval", "--verifier", str(tmp_path / "nothing"), "--data",
                str(gsm8k_file)]) == 2
    assert "no manifest.json" in capsys.readouterr().err
    data = tmp_path / "mmlu.jsonl"
    write_examples(data, mmlu_split[0][:50])
    assert run(["verifier", "train", "--data", str(data), "--kind", "answer", "--out",
                str(tmp_path / "x")]) == 2
    assert "needs the small model's answer" in capsys.readouterr().err


def test_quality_on_held_out_rows(answer_verifier: Verifier, prompt_verifier: Verifier,
                                  gsm8k_split: tuple[list[Example], list[Example]],
                                  mmlu_split: tuple[list[Example], list[Example]]) -> None:
    """Even trained on subsets, both verifiers route far better than the baselines."""
    answer = evaluate(answer_verifier, gsm8k_split[1])
    assert answer.router("verifier").apgr > 0.7
    assert answer.router("verifier").apgr > answer.router("prompt-length").apgr + 0.1
    prompt = evaluate(prompt_verifier, mmlu_split[1])
    assert prompt.router("verifier").apgr > 0.58
    assert prompt.router("verifier").apgr > prompt.router("random").apgr + 0.05
