"""Artifacts: round trip, manifest, integrity and unsafe-content refusal; the fast path."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import skops.io
from sklearn.preprocessing import FunctionTransformer
from threadpoolctl import threadpool_limits  # type: ignore[import-untyped, unused-ignore]

from verifiers.artifact import (
    MANIFEST_FILE,
    MODEL_FILE,
    file_sha256,
    load_artifact,
    save_artifact,
)
from verifiers.data import Answer, Example, VerifierInput
from verifiers.errors import (
    ArtifactError,
    ArtifactIntegrityError,
    SpecError,
    UnsafeArtifactError,
    VerifierError,
)
from verifiers.scoring import Verifier
from verifiers.spec import HeadSpec, VerifierSpec, preset
from verifiers.training import fit

TRAINING = {"data": "test.jsonl", "sha256": "0" * 64}


def saved(verifier: Verifier, directory: Path) -> Path:
    save_artifact(directory, verifier.spec, verifier.state, training=TRAINING)
    return directory


@pytest.fixture(scope="module")
def answer_dir(answer_verifier: Verifier, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return saved(answer_verifier, tmp_path_factory.mktemp("answer"))


def test_round_trip_gives_identical_scores(answer_verifier: Verifier, answer_dir: Path,
                                           gsm8k_split: tuple[list[Example], list[Example]]
                                           ) -> None:
    items = [e.input for e in gsm8k_split[1][:80]]
    loaded = load_artifact(answer_dir)
    np.testing.assert_array_equal(loaded.score_batch(items), answer_verifier.score_batch(items))
    single = np.array([loaded.score(item) for item in items])
    np.testing.assert_allclose(single, loaded.score_batch(items), rtol=0, atol=1e-12)
    assert loaded.kind == "answer" and loaded.score_name == "expected_gain"
    assert loaded.sha256 == file_sha256(answer_dir / MODEL_FILE)
    assert loaded.id == f"vrf-{loaded.sha256[:12]}"


def test_manifest(answer_dir: Path) -> None:
    manifest = json.loads((answer_dir / MANIFEST_FILE).read_text())
    assert manifest["sha256"] == file_sha256(answer_dir / MODEL_FILE)
    assert manifest["kind"] == "answer" and manifest["target"] == "gain"
    assert manifest["training"] == TRAINING
    assert {"python", "scikit-learn", "numpy", "scipy", "skops"} <= set(manifest["libraries"])
    assert "arithmetic.arith_any_wrong" in manifest["features"]["numeric"]
    assert manifest["spec"]["small"]["model"] == "stacked"
    assert VerifierSpec.from_json(manifest["spec"]) == preset("answer")


def test_prompt_verifier_fast_path_matches_batch(prompt_verifier: Verifier,
                                                 mmlu_split: tuple[list[Example], list[Example]]
                                                 ) -> None:
    items = [e.input for e in mmlu_split[1][:150]]
    items += [replace(item, slice=None) for item in items[:50]]
    items += [replace(items[0], slice="not-a-subject"), VerifierInput("")]
    batch = prompt_verifier.score_batch(items)
    single = np.array([prompt_verifier.score(item) for item in items])
    np.testing.assert_allclose(single, batch, rtol=0, atol=1e-12)
    prediction = prompt_verifier.predict_one(items[0])
    assert 0 <= prediction.p_small_wrong <= 1 and prediction.p_large_right is not None
    assert prediction.score == pytest.approx(prediction.p_large_right
                                             + prediction.p_small_wrong - 1)


@pytest.mark.parametrize("threads", [1, 2])
def test_same_data_gives_the_same_artifact(gsm8k_split: tuple[list[Example], list[Example]],
                                           answer_dir: Path, tmp_path: Path, threads: int) -> None:
    """Whatever thread pools the caller set (the session fixture fitted under the defaults)."""
    with threadpool_limits(limits=threads):
        again = fit(gsm8k_split[0][:300], preset("answer"))
    assert saved(again, tmp_path / "again") and \
        file_sha256(tmp_path / "again" / MODEL_FILE) == file_sha256(answer_dir / MODEL_FILE)


def test_tampered_model_file_is_refused(answer_dir: Path, tmp_path: Path) -> None:
    copy = Path(shutil.copytree(answer_dir, tmp_path / "copy"))
    data = bytearray((copy / MODEL_FILE).read_bytes())
    data[len(data) // 2] ^= 0x01
    (copy / MODEL_FILE).write_bytes(bytes(data))
    with pytest.raises(ArtifactIntegrityError) as error:
        load_artifact(copy)
    expected = json.loads((copy / MANIFEST_FILE).read_text())["sha256"]
    assert expected in str(error.value) and file_sha256(copy / MODEL_FILE) in str(error.value)
    assert isinstance(error.value, VerifierError)


def test_untrusted_types_are_refused(answer_dir: Path, tmp_path: Path) -> None:
    """A model file whose sha256 matches but that would build a callable (eval)."""
    copy = Path(shutil.copytree(answer_dir, tmp_path / "evil"))
    state = skops.io.load(answer_dir / MODEL_FILE,
                          trusted=skops.io.get_untrusted_types(file=answer_dir / MODEL_FILE))
    state["heads"]["small"]["calibrator"] = FunctionTransformer(func=eval)
    skops.io.dump(state, copy / MODEL_FILE)
    manifest = json.loads((copy / MANIFEST_FILE).read_text())
    manifest["sha256"] = file_sha256(copy / MODEL_FILE)
    (copy / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(UnsafeArtifactError, match=r"builtins\.eval") as error:
        load_artifact(copy)
    assert "builtins.eval" in error.value.untrusted


@pytest.mark.parametrize("damage", ["no-manifest", "bad-json", "format", "model-path",
                                    "missing-model", "not-a-zip", "wrong-state"])
def test_broken_artifacts_are_refused(answer_dir: Path, tmp_path: Path, damage: str) -> None:
    copy = Path(shutil.copytree(answer_dir, tmp_path / damage))
    manifest = json.loads((copy / MANIFEST_FILE).read_text())
    if damage == "no-manifest":
        (copy / MANIFEST_FILE).unlink()
    elif damage == "bad-json":
        (copy / MANIFEST_FILE).write_text("{")
    elif damage == "format":
        manifest["format"] = "something/9"
    elif damage == "model-path":
        manifest["model_file"] = "../model.skops"
    elif damage == "missing-model":
        (copy / MODEL_FILE).unlink()
    elif damage == "not-a-zip":
        (copy / MODEL_FILE).write_bytes(b"not a zip")
        manifest["sha256"] = file_sha256(copy / MODEL_FILE)
    elif damage == "wrong-state":
        skops.io.dump({"format": 1, "heads": {}}, copy / MODEL_FILE)
        manifest["sha256"] = file_sha256(copy / MODEL_FILE)
    if damage not in ("no-manifest", "bad-json"):
        (copy / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError):
        load_artifact(copy)


def test_spec_validation() -> None:
    with pytest.raises(SpecError, match="cannot read the answer"):
        VerifierSpec(kind="prompt", small=HeadSpec(text=("answer",)))
    with pytest.raises(SpecError, match="answer features"):
        VerifierSpec(kind="prompt", extractors=(("arithmetic", {}),))
    with pytest.raises(SpecError, match="large head"):
        VerifierSpec(kind="answer", large=None)
    with pytest.raises(SpecError, match="unknown classifier"):
        VerifierSpec(kind="prompt", small=HeadSpec(model="svm"))
    assert preset("prompt", "small-wrong").large is None


def test_other_classifier_models_round_trip(gsm8k_split: tuple[list[Example], list[Example]],
                                            tmp_path: Path) -> None:
    """gbdt heads (trusted TreePredictor), calibration and the small-wrong target."""
    names = ("prompt_stats", "answer_stats", "arithmetic")
    spec = VerifierSpec(
        kind="answer", target="small-wrong",
        extractors=tuple((n, {}) for n in names),
        small=HeadSpec(model="gbdt", text=(), numeric=names, calibration="sigmoid",
                       params={"max_iter": 10, "folds": 3}),
        large=None, slice_dropout=False)
    verifier = fit(gsm8k_split[0][:150], spec)
    loaded = load_artifact(saved(verifier, tmp_path / "gbdt"))
    items = [e.input for e in gsm8k_split[1][:40]] + [VerifierInput("q", Answer("#### 3"))]
    np.testing.assert_allclose([loaded.score(i) for i in items], loaded.score_batch(items),
                               atol=1e-12)
    assert loaded.score_name == "p_small_wrong"
    isotonic = replace(spec, small=HeadSpec(model="stacked", text=("answer",), numeric=names,
                                            calibration="isotonic",
                                            params={"outer": "gbdt", "max_iter": 10,
                                                    "folds": 3}))
    verifier = fit(gsm8k_split[0][:150], isotonic)
    loaded = load_artifact(saved(verifier, tmp_path / "isotonic"))
    np.testing.assert_allclose([loaded.score(i) for i in items], loaded.score_batch(items),
                               atol=1e-12)
