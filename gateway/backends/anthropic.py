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
from gateway.backends.http import HTTPBackend, _drain, _retry_after, map_status
from gateway.backends.httpclient import ClientError, Response
from gateway.backends.settings import AnthropicModelSettings
from gateway.kernel.backend import Backend
from gateway.kernel.errors import TiergateError, UpstreamError, UpstreamTimeoutError
from gateway.kernel.generation import (
    EmbeddingRequest,
    EmbeddingResult,
    GenerationChunk,
    GenerationRequest,
    GenerationResult,
    Timing,
)
from gateway.kernel.modeltuple import ModelTuple
from gateway.kernel.secrets import redact_error

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
            return error_for(ERROR_STATUSES[status], message, _retry_after(headers))
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

    async def stream(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        resp = await self._open(request, stream=True)
        translator = StreamTranslator()
        try:
            if resp.content_type != "text/event-stream":
                raise UpstreamError(f"model {self.name}: upstream answered {resp.content_type!r} "
                                    "to a streaming request")
            tail = b""
            async for data in resp.iter_any():
                lines = (tail + data if tail else data).split(b"\n")
                tail = lines.pop()
                chunks: list[GenerationChunk] = []
                failure: TiergateError | None = None
                for line in lines:
                    if not line.startswith(b"data:"):
                        continue  # "event:" lines name what the data's "type" says again
                    try:
                        chunks.extend(translator.event(orjson.loads(line[5:].strip())))
                    except orjson.JSONDecodeError as exc:
                        failure = UpstreamError(f"model {self.name}: upstream sent an invalid "
                                                "SSE event")
                        failure.__cause__ = exc
                    except TiergateError as exc:
                        failure = exc
                    if failure is not None or translator.done:
                        break
                for chunk in chunks:  # sent on together, as they arrived together
                    chunk.buffered = True
                if chunks and failure is None:
                    chunks[-1].buffered = False
                for chunk in chunks:
                    yield chunk
                if failure is not None:
                    raise failure
                if translator.done:
                    break
        except TimeoutError as exc:
            raise UpstreamTimeoutError(f"model {self.name}: upstream stream timed out") from exc
        except ClientError as exc:
            raise UpstreamError(
                f"model {self.name}: upstream stream failed: {redact_error(exc)}") from exc
        finally:
            if translator.done:
                await _drain(resp)
            else:
                resp.close()
        if not translator.done:
            raise UpstreamError(f"model {self.name}: upstream closed the stream mid-answer")
