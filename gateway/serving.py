"""The serving object: an OpenAI request in, a served response out.

Routes parse and authorize; this module resolves the model, applies gateway policy (the effective
seed), calls the backend and shapes the answer. It never touches HTTP objects: it returns a
:class:`Served` (a body, or a stream of SSE bytes) with the headers to send.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from gateway import protocol
from gateway.backends.base import GenerationChunk, GenerationRequest, StreamAccumulator
from gateway.dispatch import Dispatcher, aclose
from gateway.errors import TiergateError, internal_error
from gateway.modeltuple import ModelTuple
from gateway.protocol import SSE_DONE, sse_event
from gateway.registry import ModelRegistry
from gateway.settings import Settings

log = logging.getLogger("tiergate.serving")

SEED_BOUND = 2**31
"""Drawn seeds stay below 2**31: every engine (vLLM, llama.cpp, torch) and JSON client takes it."""


@dataclass(slots=True)
class RequestContext:
    request_id: str
    caller: str | None = None


@dataclass(slots=True)
class Served:
    """A response ready to send: ``body`` (JSON) or ``stream`` (SSE bytes), and headers."""

    headers: dict[str, str]
    body: dict[str, Any] | None = None
    stream: AsyncIterator[bytes] | None = None


def _model_headers(model: ModelTuple, request: GenerationRequest) -> dict[str, str]:
    headers = {"x-tiergate-model": model.header_value()}
    if request.sampling.seed is not None:
        headers["x-tiergate-seed"] = str(request.sampling.seed)
    return headers


class OpenAIServing:
    """Chat completions and completions over the model registry."""

    def __init__(self, settings: Settings, registry: ModelRegistry) -> None:
        self.settings = settings
        self.registry = registry
        self.dispatcher = Dispatcher(registry)

    def _prepare(self, req: protocol.OpenAIRequest, ctx: RequestContext) -> GenerationRequest:
        gen = req.to_generation_request(ctx.request_id)
        sampling = gen.sampling
        if sampling.seed is None and not sampling.greedy and self.settings.default_seed_draw:
            # The effective seed: drawn here and passed down, so a sampled answer can be replayed.
            sampling.seed = secrets.randbelow(SEED_BOUND)
        return gen

    async def create(self, req: protocol.OpenAIRequest, ctx: RequestContext) -> Served:
        self.registry.get(req.model)  # an unknown model is a 404 before anything else
        gen = self._prepare(req, ctx)
        if req.stream:
            return await self._stream(req, gen)
        result = await self.dispatcher.generate(req.model, gen)
        build = protocol.chat_completion if gen.kind == "chat" else protocol.completion
        body = build(result, ctx.request_id, result.model.name, gen.return_token_ids)
        return Served(headers=_model_headers(result.model, gen), body=body)

    async def _stream(self, req: protocol.OpenAIRequest, gen: GenerationRequest) -> Served:
        # The first chunk arrives before the 200 is committed: a failure up to there is an
        # ordinary HTTP error, after retries and fallbacks (gateway.dispatch).
        opened = await self.dispatcher.open_stream(req.model, gen)
        model = opened.backend.describe()
        chunks = protocol.ChunkBuilder(gen.kind, gen.request_id, model.name, gen.return_token_ids)
        events = self._events(opened.rest, opened.first, chunks, model, gen, req.include_usage)
        return Served(headers=_model_headers(model, gen), stream=events)

    async def _events(
        self,
        upstream: AsyncIterator[GenerationChunk],
        first: GenerationChunk | None,
        chunks: protocol.ChunkBuilder,
        model: ModelTuple,
        gen: GenerationRequest,
        include_usage: bool,
    ) -> AsyncIterator[bytes]:
        accumulator = StreamAccumulator(model, gen.sampling.n)
        try:
            if first is not None:
                accumulator.add(first)
                if first.index is not None:
                    yield sse_event(chunks.chunk(first))
            async for chunk in upstream:
                accumulator.add(chunk)
                if chunk.index is not None:
                    yield sse_event(chunks.chunk(chunk))
        except TiergateError as exc:
            log.warning("request %s: stream failed: %s", gen.request_id, exc.message)
            yield sse_event(exc.body())
            return
        except Exception:
            log.exception("request %s: stream failed", gen.request_id)
            yield sse_event(internal_error().body())
            return
        finally:
            await aclose(upstream)
        if include_usage:
            yield sse_event(chunks.usage(accumulator.usage or accumulator.result().usage))
        yield SSE_DONE

