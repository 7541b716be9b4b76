"""Out-of-sample calibration rows: the validation split of the training file, cross-fitted
scores of a refitted verifier, other files; in-sample rows refused unless allowed."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from router.calibration import CostModel, bootstrap, measure, operating_points, suggest
from verifiers.artifact import MANIFEST_FILE, load_artifact
from verifiers.data import Example, read_examples, split_examples, write_examples
from verifiers.errors import ArtifactError
from verifiers.holdout import InSampleError, calibration_rows
from verifiers.scoring import Verifier
from verifiers.training import CALIBRATION_FILE, fit, fold_of, train_artifact

FOLDS = 3


@pytest.fixture(scope="module")
def data_file(tmp_path_factory: pytest.TempPathFactory,
              gsm8k_split: tuple[list[Example], list[Example]]) -> Path:
    train, validation = gsm8k_split
    path = tmp_path_factory.mktemp("holdout") / "pairs.jsonl"
    write_examples(path, train[:160] + validation[:40])
    return path


@pytest.fixture(scope="module")
def plain(data_file: Path) -> Path:
    out = data_file.parent / "plain"
    train_artifact(data_file, "answer", out)
    return out


@pytest.fixture(scope="module")
def refitted(data_file: Path) -> Path:
    out = data_file.parent / "refit"
    result = train_artifact(data_file, "answer", out, refit=True, folds=FOLDS)
    assert result.refit_rows == 200
    return out


def test_training_file_gives_its_validation_split(plain: Path, data_file: Path) -> None:
    manifest = json.loads((plain / MANIFEST_FILE).read_text())
    rows = calibration_rows(plain, manifest, data_file)
    assert rows.examples is not None and rows.scores is None and rows.warning is None
    _, validation = split_examples(rows.examples)
    assert [e.id for e in rows.examples] == [e.id for e in validation]
    assert rows.n == manifest["training"]["rows"]["validation"] == 40
    assert "validation split" in rows.source


def test_training_rows_are_refused_unless_allowed(plain: Path, data_file: Path) -> None:
    manifest = json.loads((plain / MANIFEST_FILE).read_text())
    with pytest.raises(InSampleError, match="training data"):
        calibration_rows(plain, manifest, data_file, "all")
    rows = calibration_rows(plain, manifest, data_file, "all", allow_in_sample=True)
    assert rows.n == 200 and rows.warning is not None and "IN-SAMPLE" in rows.source


def test_another_file_is_used_whole(plain: Path, tmp_path: Path,
                                    gsm8k_split: tuple[list[Example], list[Example]]) -> None:
    manifest = json.loads((plain / MANIFEST_FILE).read_text())
    other = tmp_path / "other.jsonl"
    write_examples(other, gsm8k_split[0][300:350] + gsm8k_split[1][50:100])
    rows = calibration_rows(plain, manifest, other)
    assert rows.n == 100 and "not the verifier's training file" in rows.source
    assert calibration_rows(plain, manifest, other, "validation").n == 50


def test_refit_stores_cross_fitted_scores(refitted: Path, data_file: Path) -> None:
    verifier = load_artifact(refitted)
    manifest = verifier.manifest
    assert manifest["training"]["refit"]["rows"] == 200
    assert manifest["calibration"]["folds"] == FOLDS
    # every row of the training file, scored out of fold: refitting on all rows is allowed
    rows = calibration_rows(refitted, manifest, data_file)
    assert rows.scores is not None and rows.n == 200 and "cross-fitted" in rows.source
    assert calibration_rows(refitted, manifest, None).n == 200
    # the scores of one fold are those of a model that never saw that fold
    lines = [json.loads(line) for line in (refitted / CALIBRATION_FILE).read_text().splitlines()]

    examples = read_examples(data_file).examples
    fold = [e for e in examples if fold_of(e.prompt, FOLDS) == 0]
    rest = [e for e in examples if fold_of(e.prompt, FOLDS) != 0]
    model = fit(rest, verifier.spec)
    expected = model.score_batch([replace(e.input, slice=None) for e in fold])
    stored = {line["id"]: line["score"] for line in lines}
    assert np.allclose([stored[e.id] for e in fold], expected, atol=1e-12)
    # in-sample: the refitted model's own scores on its training rows are not what is stored
    own = verifier.score_batch([replace(e.input, slice=None) for e in fold])
    assert not np.allclose(own, expected, atol=1e-6)
    with pytest.raises(InSampleError, match="refitted"):
        calibration_rows(refitted, manifest, data_file, "validation")


def test_tampered_calibration_scores_are_refused(refitted: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    copy.mkdir()
    for path in refitted.iterdir():
        (copy / path.name).write_bytes(path.read_bytes())
    lines = (copy / CALIBRATION_FILE).read_text().splitlines()
    first = json.loads(lines[0])
    first["score"] = 1.0
    (copy / CALIBRATION_FILE).write_text("\n".join([json.dumps(first), *lines[1:]]) + "\n")
    manifest = json.loads((copy / MANIFEST_FILE).read_text())
    with pytest.raises(ArtifactError, match="differs from the manifest"):
        calibration_rows(copy, manifest, None)


def test_no_data_needs_stored_scores(plain: Path) -> None:
    manifest = json.loads((plain / MANIFEST_FILE).read_text())
    with pytest.raises(ArtifactError, match="--refit"):
        calibration_rows(plain, manifest, None)


def test_validation_promise_holds_on_unseen_rows(
        answer_verifier: Verifier, gsm8k_split: tuple[list[Example], list[Example]]) -> None:
    """The fixture verifier trained on the first 300 GSM8K train rows: a threshold chosen for
    40 % on the validation split, with its bootstrap interval, against the 500 train rows it
    never saw."""
    train, validation = gsm8k_split
    cost = CostModel("cascade", 10.0)

    def scored(rows: list[Example]) -> tuple[list[float], list[bool], list[bool]]:
        scores = answer_verifier.score_batch([replace(e.input, slice=None) for e in rows])
        return (scores.tolist(), [e.small_correct for e in rows],
                [bool(e.large_correct) for e in rows])

    scores, small, large = scored(validation)
    chosen = suggest(operating_points(scores, small, large, cost, (-1.0, 1.0)), escalation=0.4)
    interval = bootstrap(scores, small, large, chosen.threshold)
    unseen = measure(*scored(train[300:]), chosen.threshold, cost)
    assert interval.share[0] <= unseen.share <= interval.share[1]
    assert interval.accuracy[0] <= unseen.accuracy <= interval.accuracy[1]
