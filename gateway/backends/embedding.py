"""A sentence-embedding model served in-process: MiniLM, the encoder the verifiers read
(:mod:`verifiers.embeddings`), behind ``/v1/embeddings``.

Its weights come from the catalogue's package, checked against the catalogue's sha256 pins at
every load (and against ``weights_sha256`` when the settings pin one), so the model tuple names
exactly what encodes. Each input is encoded alone on one torch thread, in a worker thread: a
vector does not depend on the batch it came in, and the event loop never waits on torch.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from gateway.backends.settings import EmbeddingModelSettings
from gateway.kernel.backend import Backend
from gateway.kernel.errors import (
    ConfigError,
    InvalidRequestError,
    ModelIntegrityError,
    ServiceUnavailableError,
)
from gateway.kernel.generation import (
    EmbeddingRequest,
    EmbeddingResult,
    GenerationChunk,
    GenerationRequest,
    GenerationResult,
    Usage,
)
from gateway.kernel.modeltuple import ModelTuple

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from verifiers.embeddings import EmbeddingModel, SentenceEncoder

IGNORED_FIELDS = frozenset({"user", "encoding_format"})
"""Fields that do not change a vector (the encoding is the gateway's to apply)."""


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


class EmbeddingBackend(Backend):
    def __init__(self, name: str, settings: EmbeddingModelSettings) -> None:
        super().__init__(name)
        from verifiers.embeddings import CATALOGUE

        entry = CATALOGUE.get(settings.model)
        if entry is None:
            raise ConfigError(f"model {name}: unknown embedding model {settings.model!r} "
                              f"(known: {', '.join(CATALOGUE)})")
        if settings.weights_sha256 not in (None, entry.weights_sha256):
            raise ConfigError(f"model {name}: weights_sha256 {settings.weights_sha256} is not "
                              f"the pin of {entry.name} ({entry.weights_sha256})")
        self.settings = settings
        self.entry: EmbeddingModel = entry
        self._encoder: SentenceEncoder | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._tuple = self._build_tuple(entry.pip)

    def describe(self) -> ModelTuple:
        return self._tuple

    def _build_tuple(self, source: str) -> ModelTuple:
        return ModelTuple(
            name=self.name, engine="transformers",
            engine_version=f"transformers {_version('transformers')}; torch {_version('torch')}",
            upstream_model=self.entry.name, base_weights_sha256=self.entry.weights_sha256,
            adapter=self.settings.adapter,
            source=source)

    async def start(self) -> None:
        from verifiers.embeddings import SentenceEncoder, package_zip
        from verifiers.errors import EmbeddingsUnavailableError

        try:
            path = package_zip(self.entry)
            self._encoder = await asyncio.to_thread(SentenceEncoder, self.entry, path)
        except EmbeddingsUnavailableError as exc:
            raise ModelIntegrityError(f"model {self.name}: {exc}") from exc
        self._tuple = self._build_tuple(str(path))
        self._executor = ThreadPoolExecutor(max_workers=self.settings.max_batch,
                                            thread_name_prefix=f"tiergate-embed-{self.name}")

    async def aclose(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
        self._encoder = None

    async def health(self) -> dict[str, Any]:
        return {"status": "ok" if self._encoder is not None else "not started"}

    def _check(self, request: EmbeddingRequest) -> list[str]:
        for name, value in request.passthrough.items():
            if name in IGNORED_FIELDS or value is None:
                continue
            if name == "dimensions" and value == self.entry.dim:
                continue
            raise InvalidRequestError(
                f"'{name}' is not supported by in-process embedding model {self.name}"
                + (f" ({self.entry.dim} dimensions)" if name == "dimensions" else ""),
                param=name, code="unsupported_parameter")
        texts = [t for t in request.input if isinstance(t, str)]
        if len(texts) != len(request.input):
            raise InvalidRequestError(f"model {self.name} embeds text, not token ids",
                                      param="input")
        return texts

    async def embed(self, request: EmbeddingRequest) -> EmbeddingResult:
        texts = self._check(request)
        encoder, executor = self._encoder, self._executor
        if encoder is None or executor is None:
            raise ServiceUnavailableError(f"model {self.name} is not started")
        loop = asyncio.get_running_loop()
        vectors = await asyncio.gather(*(loop.run_in_executor(executor, encoder.encode, text)
                                         for text in texts))
        tokens = sum(len(encoder.tokenizer.encode(text).ids) for text in texts)
        return EmbeddingResult(self._tuple, [v.tolist() for v in vectors],
                               Usage(prompt_tokens=tokens))

    def _not_generating(self) -> InvalidRequestError:
        return InvalidRequestError(f"model {self.name} is an embedding model: use "
                                   "/v1/embeddings", param="model", code="unsupported_model")

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        raise self._not_generating()

    async def stream(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        raise self._not_generating()
        yield  # an async generator  # pragma: no cover
