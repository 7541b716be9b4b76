"""The one small async interface behind which every model server sits.

A backend turns a :class:`GenerationRequest` into a :class:`GenerationResult` (or a stream of
:class:`GenerationChunk`) and says what it is (:meth:`Backend.describe` → :class:`ModelTuple`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from typing import Any

from gateway.kernel.errors import InvalidRequestError
from gateway.kernel.generation import (
    EmbeddingRequest,
    EmbeddingResult,
    GenerationChunk,
    GenerationRequest,
    GenerationResult,
)
from gateway.kernel.modeltuple import ModelTuple


class Backend(ABC):
    """A model server. One instance per configured model; safe for concurrent use."""

    def __init__(self, name: str) -> None:
        self.name = name

    @abstractmethod
    async def start(self) -> None:
        """Open connections / load weights, learn and verify the model's identity."""

    @abstractmethod
    def describe(self) -> ModelTuple:
        """The model tuple this backend serves (valid after :meth:`start`)."""

    @abstractmethod
    async def generate(self, request: GenerationRequest) -> GenerationResult:
        """Decode a whole answer."""

    @abstractmethod
    def stream(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        """Decode an answer piece by piece; the last chunk carries the usage."""

    async def embed(self, request: EmbeddingRequest) -> EmbeddingResult:
        """Embed a batch (``/v1/embeddings``); a model that does not embed answers 400."""
        raise InvalidRequestError(f"model {self.name} does not serve embeddings", param="model",
                                  code="unsupported_model")

    def batching(self) -> dict[str, Any] | None:
        """How this backend batches decodes, where that decides their bits (the in-process
        engine: ``{"mode": "off"}`` or ``{"mode": "invariant", ...}``), recorded in a call's
        ``runtime.batching``; ``None``: not said."""
        return None

    async def health(self) -> dict[str, Any]:
        return {"status": "ok"}

    async def aclose(self) -> None:  # noqa: B027 - optional hook, nothing to release by default
        """Release connections, threads and memory."""
