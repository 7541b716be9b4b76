"""Route curves on the rows :mod:`verifiers.holdout` lets calibrate: the validation split of the
verifier's own training file, the cross-fitted scores of a refitted one, never its training rows;
no data is a note."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from canary.settings import ShadowSettings
from gateway.serving.curves import SOURCES, RouteCurves
from router.calibration import CostModel, measure
from router.loading import build_router
from router.settings import RouteSettings
from tests.router.test_routing import manifest_sha256
from verifiers.artifact import load_artifact
from verifiers.data import VerifierInput, read_examples, split_examples
from verifiers.training import train_artifact


def rows() -> list[dict[str, Any]]:
    """Easy prompts the small model gets right, hard ones only the large model."""
    out = []
    for i in range(200):
        hard = i % 2 == 1
        out.append({"id": f"r{i}", "small_correct": not hard and i % 7 != 0,
                    "large_correct": i % 11 != 0, "request": {"messages": [
                        {"role": "user",
                         "content": f"{'hard puzzle' if hard else 'easy sum'} number {i}"}]}})
    return out


def curves_of(tmp_path: Path, refit: bool, **route: Any) -> tuple[RouteCurves, Path]:
    data = tmp_path / "train.jsonl"
    data.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows()))
    artifact = tmp_path / "verifier"
    train_artifact(data, "prompt", artifact, target="small-wrong", refit=refit, folds=3)
    routes = {"auto": RouteSettings(mode="prompt", small="s", large="l", verifier=artifact,
                                    verifier_sha256=manifest_sha256(artifact), threshold=0.5,
                                    **route),
              "fixed": RouteSettings(mode="fixed", small="s", large="l")}
    return RouteCurves(routes, build_router(routes, None),
                       ShadowSettings(dir=tmp_path / "shadow")), data


async def test_the_training_file_gives_its_validation_split(tmp_path: Path) -> None:
    curves, data = curves_of(tmp_path, refit=False)
    curves.routes["auto"].evaluation_data = data
    answer = await curves.curve("auto", "evaluation")
    _, validation = split_examples(read_examples(data).examples)
    verifier = load_artifact(tmp_path / "verifier")
    scores = [verifier.score(VerifierInput(e.prompt, e.small, None)) for e in validation]
    small = [e.small_correct for e in validation]
    large = [bool(e.large_correct) for e in validation]
    expected = measure(scores, small, large, 0.5, CostModel("prompt", 10.0))
    assert 0 < answer["rows"] == len(validation) < 200 and answer["note"] is None
    assert answer["current"]["accuracy"] == expected.accuracy
    assert answer["current"]["escalation"] == expected.share


async def test_a_refitted_verifier_uses_its_cross_fitted_scores(tmp_path: Path) -> None:
    curves, data = curves_of(tmp_path, refit=True)
    curves.routes["auto"].evaluation_data = data
    answer = await curves.curve("auto", "evaluation")
    stored = [orjson.loads(line) for line in
              (tmp_path / "verifier" / "calibration.jsonl").read_bytes().splitlines()]
    expected = measure([r["score"] for r in stored], [r["small_correct"] for r in stored],
                       [r["large_correct"] for r in stored], 0.5, CostModel("prompt", 10.0))
    assert answer["rows"] == 200 and answer["current"]["accuracy"] == expected.accuracy


@pytest.mark.parametrize("route", ["auto", "fixed"])
async def test_no_data_is_a_note(tmp_path: Path, route: str) -> None:
    curves, _ = curves_of(tmp_path, refit=False)
    for source in SOURCES:
        answer = await curves.curve(route, source)
        assert (answer["rows"], answer["points"], answer["current"]) == (0, [], None)
        assert answer["note"]
    missing = tmp_path / "missing.jsonl"
    curves.routes["auto"].evaluation_data = missing
    answer = await curves.curve("auto", "evaluation")
    assert answer["rows"] == 0 and str(missing) in answer["note"]
