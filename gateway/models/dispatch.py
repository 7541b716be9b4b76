"""Calling a model with retries and fallbacks, before anything is committed to the client.

A call goes to the model's backend; if it fails with a backend failure (down, timed out, 5xx,
garbage; see :data:`gateway.models.resilience.BACKEND_FAILURES`) it is retried up to ``retries``
times with a doubling backoff, then each of the model's ``fallbacks`` is tried the same way. An
open circuit, a model still loading (or failed to load), or one refused by its gates is not
retried: the next model is tried at once. A client error (4xx) or an overload (429) ends the
call at once. For streams, "before anything is committed" means until the first chunk arrived:
after that, a failure is an SSE error event (see :mod:`gateway.serving`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from gateway.kernel.backend import Backend
from gateway.kernel.errors import TiergateError
from gateway.kernel.generation import (
    EmbeddingRequest,
    EmbeddingResult,
    GenerationChunk,
    GenerationRequest,
    GenerationResult,
)
from gateway.models.registry import ModelRegistry
from gateway.models.resilience import BACKEND_FAILURES, NOT_LOADED
from gateway.telemetry.instruments import Telemetry

log = logging.getLogger("tiergate.dispatch")

QUIET = frozenset({"model_loading", "model_not_validated"})
"""Refusals not logged per request (the start logs them)."""


@dataclass(slots=True)
class OpenedStream:
    backend: Backend
    first: GenerationChunk | None
    rest: AsyncIterator[GenerationChunk]


T = TypeVar("T")


class Dispatcher:
    def __init__(self, registry: ModelRegistry, telemetry: Telemetry) -> None:
        self.registry = registry
        self.telemetry = telemetry
        self.redirects: dict[str, str] = {}
        """Rollbacks in force: a model's traffic goes to another configured model (its pinned
        version) until the canary alarm behind it is acknowledged (:mod:`canary.monitor`)."""

    def chain(self, name: str) -> list[str]:
        """The models a call to ``name`` tries, in order: ``name`` (or the version it is rolled
        back to), then its fallbacks."""
        fallbacks = self.registry.settings_of(name).fallbacks
        target = self.redirects.get(name)
        if target is None:
            return [name, *fallbacks]
        return [target, *(f for f in fallbacks if f != target)]

    async def _first_success(
        self, name: str, request: GenerationRequest | EmbeddingRequest,
        call: Callable[[Backend], Awaitable[T]],
    ) -> T:
        first: TiergateError | None = None
        last: TiergateError | None = None
        for model in self.chain(name):
            settings = self.registry.settings_of(model)
            delay = settings.retry_backoff_s
            for attempt in range(settings.retries + 1):
                try:
                    with self.telemetry.span("tiergate.backend", **{
                            "tiergate.model": model, "tiergate.attempt": attempt + 1}):
                        return await call(self.registry.get(model))
                except BACKEND_FAILURES as exc:
                    first, last = first or exc, exc
                    if exc.code not in QUIET:  # loading: expected at start; refused: said once
                        log.warning("request %s: model %s attempt %d failed: %s",
                                    request.request_id, model, attempt + 1, exc.message)
                    if exc.code in NOT_LOADED or attempt == settings.retries:
                        break
                    await asyncio.sleep(delay)
                    delay *= 2
        assert first is not None and last is not None
        # every model refused before a call (loading, say): the client hears of the one it named
        raise first if last.code in NOT_LOADED and first.code in NOT_LOADED else last

    async def call(self, name: str, request: GenerationRequest,
                   call: Callable[[Backend], Awaitable[T]]) -> T:
        """``call`` on ``name``'s backend, with its retries and fallbacks (a call of another
        kind than generate / stream / embed: a forwarded ``/v1/responses``)."""
        return await self._first_success(name, request, call)

    async def generate(self, name: str, request: GenerationRequest) -> GenerationResult:
        async def call(backend: Backend) -> GenerationResult:
            return await backend.generate(request)

        return await self._first_success(name, request, call)

    async def embed(self, name: str, request: EmbeddingRequest) -> EmbeddingResult:
        async def call(backend: Backend) -> EmbeddingResult:
            return await backend.embed(request)

        return await self._first_success(name, request, call)

    async def open_stream(self, name: str, request: GenerationRequest) -> OpenedStream:
        """The stream of the first model that produced a first chunk."""
        async def call(backend: Backend) -> OpenedStream:
            stream = backend.stream(request)
            try:
                first: GenerationChunk | None = await anext(stream)
            except StopAsyncIteration:
                first = None
            except BaseException:
                await aclose(stream)
                raise
            return OpenedStream(backend, first, stream)

        return await self._first_success(name, request, call)


async def aclose(iterator: AsyncIterator[Any]) -> None:
    close = getattr(iterator, "aclose", None)
    if close is not None:
        await close()
