"""A model behind the Anthropic Messages API: a hosted large tier behind a self-hosted small one.

The transport is the HTTP backend's (:class:`~gateway.backends.http.HTTPBackend`: pooled
connections, timeouts, failures mapped, ``/health``, the URL redacted wherever shown); what
differs is the API spoken, translated both ways by :mod:`gateway.backends.anthropic_wire`:
``POST {base_url}/messages`` with ``x-api-key`` and ``anthropic-version``, SSE events
(``message_start`` … ``message_stop``) turned into chunks, Anthropic's errors (its
``{"type": "error", "error": {...}}`` body, ``529`` overloaded) into
:mod:`gateway.kernel.errors` types. The identity comes from ``GET {base_url}/models/{id}``.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import orjson

from gateway.backends.anthropic_wire import (
    StreamTranslator,
    error_for,
    messages_body,
    parse_message,
)
from gateway.backends.http import HTTPBackend
from gateway.backends.httpclient import Response
from gateway.backends.settings import AnthropicModelSettings
from gateway.backends.upstream import Read, SseLines, map_status, retry_after
from gateway.kernel.backend import Backend
from gateway.kernel.errors import TiergateError, UpstreamError
from gateway.kernel.generation import (
    EmbeddingRequest,
    EmbeddingResult,
    GenerationChunk,
    GenerationRequest,
    GenerationResult,
    Timing,
)
from gateway.kernel.modeltuple import ModelTuple

ERROR_STATUSES = {429: "rate_limit_error", 529: "overloaded_error", 503: "overloaded_error"}
"""Statuses whose meaning does not depend on the body's ``error.type``."""


class AnthropicBackend(HTTPBackend):
    settings: AnthropicModelSettings

    def _build_tuple(self, engine: str, version: str | None,
                     inner: dict[str, Any] | None = None) -> ModelTuple:
        # the Messages API takes no seed: a sampled answer is not reproducible from one
        return super()._build_tuple(engine, version, inner).model_copy(
            update={"takes_seed": False})

    def __init__(self, name: str, settings: AnthropicModelSettings) -> None:
        super().__init__(name, settings)
        self._tuple = self._build_tuple(engine="anthropic", version=settings.anthropic_version)

    def auth_headers(self) -> dict[str, str]:
        headers = {"anthropic-version": self.settings.anthropic_version}
        if self.settings.api_key is not None:
            headers["x-api-key"] = self.settings.api_key.get_secret_value()
        return headers

    def map_error(self, status: int, body: bytes, headers: Any) -> TiergateError:
        if status in ERROR_STATUSES:
            try:
                error = orjson.loads(body).get("error") or {}
                message = str(error.get("message") or f"HTTP {status}")
            except (orjson.JSONDecodeError, AttributeError):
                message = f"HTTP {status}"
            return error_for(ERROR_STATUSES[status], message, retry_after(headers))
        return map_status(status, body, headers)

    async def probe(self) -> ModelTuple:
        """Check that the upstream serves the model (``GET /models/{id}``)."""
        data = await self._get_json(f"{self.base_url}/models/{self.upstream_model}")
        if not isinstance(data, dict) or data.get("id") != self.upstream_model:
            raise UpstreamError(f"upstream does not serve {self.upstream_model!r}")
        self._tuple = self._build_tuple("anthropic", self.settings.anthropic_version)
        return self._tuple

    async def embed(self, request: EmbeddingRequest) -> EmbeddingResult:
        return await Backend.embed(self, request)

    async def _open(self, request: GenerationRequest, stream: bool) -> Response:
        body = messages_body(request, await self._upstream_model(),
                             self.settings.max_tokens_default, stream)
        return await self._post(f"{self._prefix}/messages", orjson.dumps(body),
                                request.request_id, request.trace_headers)

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        started, started_at = time.perf_counter(), time.time()
        resp = await self._open(request, stream=False)
        data, _ = await self._read_json(resp)
        if not isinstance(data, dict):
            raise UpstreamError(f"model {self.name}: upstream sent a malformed message")
        choice, usage = parse_message(data)
        return GenerationResult(
            model=self._tuple, choices=[choice], usage=usage,
            timing=Timing(started_at=started_at, first_token_s=None,
                          total_s=time.perf_counter() - started),
            runtime={"upstream": self.shown_url, "upstream_model": self.upstream_model,
                     "upstream_id": data.get("id")})

    def stream(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        translator, lines = StreamTranslator(), SseLines()

        def take(data: bytes) -> Read[GenerationChunk]:
            read: Read[GenerationChunk] = Read()
            for payload in lines.feed(data):  # "event:" lines repeat the data's "type"
                try:
                    read.items.extend(translator.event(orjson.loads(payload)))
                except orjson.JSONDecodeError as exc:
                    read.failure = self.invalid_event(exc)
                except TiergateError as exc:
                    read.failure = exc
                if read.failure is not None or translator.done:
                    break
            read.done = translator.done
            return read

        return self.chunks(lambda: self._open(request, stream=True), take)
