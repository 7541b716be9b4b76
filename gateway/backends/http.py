"""A model behind any OpenAI-compatible HTTP server: vLLM, another tiergate, a hosted API.

Pooled keep-alive connections (:mod:`gateway.backends.httpclient`: measured ~0.03 ms of CPU per
call, aiohttp's client ~0.27 ms, httpx's several times that), connect / first-byte / total
timeouts, streaming pass-through, and every upstream failure mapped to a
:mod:`gateway.kernel.errors` type at this boundary — its message redacted
(:func:`gateway.kernel.secrets.redact`: a URL's credentials, the API key), as is the URL wherever
it is shown (the model tuple's ``source``, ``/health``, records).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from typing import Any
from urllib.parse import urlsplit

import orjson

from gateway.backends.httpclient import ClientError, ConnectError, Pool, Response
from gateway.backends.responses_wire import TERMINAL_EVENTS, Event, EventReader, choice_of, usage_of
from gateway.backends.settings import UpstreamSettings
from gateway.backends.upstream import Read, SseLines, T, map_status
from gateway.backends.wire import (
    parse_chunk,
    parse_embeddings,
    parse_response,
    request_body,
)
from gateway.kernel.backend import Backend
from gateway.kernel.errors import (
    ModelIntegrityError,
    ServiceUnavailableError,
    TiergateError,
    UpstreamError,
    UpstreamTimeoutError,
)
from gateway.kernel.generation import (
    EmbeddingRequest,
    EmbeddingResult,
    GenerationChunk,
    GenerationRequest,
    GenerationResult,
    Timing,
)
from gateway.kernel.modeltuple import ModelTuple, Quantization
from gateway.kernel.secrets import redact, redact_error
from gateway.telemetry.instruments import trace_headers_for_upstream

log = logging.getLogger("tiergate.backends.http")

PROBE_EVERY_S = 5.0
"""How often ``health`` asks an upstream not reached yet for its models, at most."""
PROBE_TIMEOUT_S = 2.0
"""How long that question waits for its answer (in the background)."""


class HTTPBackend(Backend):
    def __init__(self, name: str, settings: UpstreamSettings) -> None:
        super().__init__(name)
        self.settings = settings
        self.base_url = settings.base_url.rstrip("/")
        self.shown_url = redact(self.base_url)
        """The upstream as errors, ``/health``, model tuples and records show it."""
        self.upstream_model = settings.upstream_model
        self._prefix = urlsplit(self.base_url).path
        self._pool: Pool | None = None
        self._tuple = self._build_tuple(engine="openai-compatible", version=None)
        self._identity_error: str | None = None
        self.reached = False
        """Whether the upstream answered since start (a model never reached is not "ok")."""
        self.last_error: str | None = None
        """Why the upstream could not be reached, last time (redacted)."""
        self._probed_at = -PROBE_EVERY_S
        self._probe: asyncio.Task[None] | None = None
        self.forwards_responses = getattr(settings, "responses", "translate") == "forward"
        """Whether ``/v1/responses`` goes to the upstream's own (:meth:`respond`)."""

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        s = self.settings
        self._pool = Pool(self.base_url, s.max_connections, s.connect_timeout_s,
                          s.total_timeout_s, {"user-agent": "tiergate", **self.auth_headers()})
        try:
            await self.probe()
        except TiergateError as exc:  # an upstream that is down now may be up later
            log.warning("model %s: upstream identity unknown for now: %s", self.name,
                        redact(exc.message))

    def auth_headers(self) -> dict[str, str]:
        """Headers every call upstream carries: the API key, as the upstream's API wants it."""
        key = self.settings.api_key
        return {} if key is None else {"authorization": f"Bearer {key.get_secret_value()}"}

    def map_error(self, status: int, body: bytes, headers: Any) -> TiergateError:
        """An upstream's error response → the error the client sees."""
        return map_status(status, body, headers)

    async def aclose(self) -> None:
        probe, self._probe = self._probe, None
        if probe is not None:
            probe.cancel()
            await asyncio.gather(probe, return_exceptions=True)
        if self._pool is not None:
            await self._pool.aclose()
            self._pool = None

    @property
    def pool(self) -> Pool:
        if self._pool is None:
            raise ServiceUnavailableError(f"model {self.name} is not started")
        return self._pool

    # -- identity ----------------------------------------------------------------------------

    def _build_tuple(self, engine: str, version: str | None,
                     inner: dict[str, Any] | None = None) -> ModelTuple:
        s = self.settings
        inner = inner or {}
        quantization = s.quantization or (
            Quantization.model_validate(inner["quantization"]) if inner.get("quantization")
            else Quantization())
        return ModelTuple(
            name=self.name,
            engine=engine,
            engine_version=version,
            upstream_model=self.upstream_model,
            base_weights_sha256=s.weights_sha256 or inner.get("base_weights_sha256"),
            adapter=s.adapter or inner.get("adapter"),
            quantization=quantization,
            source=self.shown_url,
        )

    async def probe(self) -> ModelTuple:
        """Learn the upstream's identity from ``/v1/models`` (and vLLM's ``/version``)."""
        data = await self._get_json(f"{self.base_url}/models")
        cards = data.get("data") if isinstance(data, dict) else None
        if not isinstance(cards, list) or not cards:
            raise UpstreamError(f"{self.shown_url}/models lists no models")
        if self.upstream_model is None:
            self.upstream_model = str(cards[0].get("id"))
        card = next((c for c in cards if c.get("id") == self.upstream_model), None)
        if card is None:
            raise UpstreamError(f"upstream does not serve {self.upstream_model!r}")
        engine, version, inner = "openai-compatible", None, None
        if isinstance(card.get("tiergate"), dict):
            inner = card["tiergate"]
            engine, version = "tiergate", inner.get("tiergate_version")
        elif card.get("owned_by") == "vllm":
            engine = "vllm"
            root = self.base_url.rsplit("/v1", 1)[0]
            try:
                version = str((await self._get_json(f"{root}/version")).get("version"))
            except TiergateError:
                version = None
        self._tuple = self._build_tuple(engine, version, inner)
        pinned, served = self.settings.weights_sha256, (inner or {}).get("base_weights_sha256")
        if pinned and served and pinned != served:
            self._identity_error = (
                f"model {self.name}: upstream serves weights sha256 {served}, pinned {pinned}")
            log.error(self._identity_error)
        else:
            self._identity_error = None
        return self._tuple

    def describe(self) -> ModelTuple:
        return self._tuple

    async def health(self) -> dict[str, Any]:
        """``ok``; ``unreachable`` while the upstream has not answered since start (asked again,
        in the background, every :data:`PROBE_EVERY_S` at most); ``degraded`` when it serves
        other weights than pinned. ``upstream`` and the errors are for admins (``/health`` shows
        them to them only)."""
        if not self.reached and self._pool is not None and self._probe is None \
                and time.monotonic() - self._probed_at >= PROBE_EVERY_S:
            self._probed_at = time.monotonic()
            self._probe = asyncio.create_task(self._probe_again(), name=f"{self.name}-probe")
        status = "degraded" if self._identity_error else "ok" if self.reached else "unreachable"
        return {"status": status, "reachable": self.reached, "upstream": self.shown_url,
                "identity_error": self._identity_error,
                "error": None if self.reached else self.last_error}

    async def _probe_again(self) -> None:
        """Ask an upstream not reached yet for its models (in the background: a health check
        never waits on an upstream)."""
        try:
            async with asyncio.timeout(PROBE_TIMEOUT_S):
                await self.probe()
        except TimeoutError:
            self.last_error = f"{self.shown_url}/models: no answer in {PROBE_TIMEOUT_S:g} s"
        except TiergateError:
            pass  # last_error says why
        finally:
            self._probe = None

    # -- calls -------------------------------------------------------------------------------

    async def _get_json(self, url: str) -> Any:
        try:
            async with asyncio.timeout(self.settings.first_byte_timeout_s):
                resp = await self.pool.request("GET", urlsplit(url).path or "/")
                try:
                    body = await resp.read()
                finally:
                    resp.release()
                if resp.status != 200:
                    raise self.map_error(resp.status, body, resp.headers)
                data = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise self._unreachable(UpstreamError(f"{redact(url)} did not return JSON")) from exc
        except TimeoutError as exc:
            raise self._unreachable(UpstreamTimeoutError(f"{redact(url)} timed out")) from exc
        except ClientError as exc:
            raise self._unreachable(ServiceUnavailableError(
                f"cannot reach {redact(url)}: {redact_error(exc)}", retry_after=1)) from exc
        except TiergateError as exc:  # an error status (map_status)
            self.last_error = exc.message
            raise
        self.reached, self.last_error = True, None
        return data

    def _unreachable(self, error: TiergateError) -> TiergateError:
        """Note why the upstream could not be reached; ``error``."""
        self.last_error = error.message
        return error

    def _target(self, request: GenerationRequest) -> str:
        return f"{self._prefix}/chat/completions" if request.kind == "chat" else \
            f"{self._prefix}/completions"

    async def _open(self, request: GenerationRequest, stream: bool) -> Response:
        """POST and wait for the response headers (the first-byte timeout); map failures."""
        upstream_model = self.upstream_model
        if upstream_model is None or self._identity_error:  # not probed yet, or refused
            upstream_model = await self._upstream_model()
        body = orjson.dumps(request_body(request, upstream_model, stream))
        return await self._post(self._target(request), body, request.request_id,
                                request.trace_headers)

    async def _upstream_model(self) -> str:
        if self._identity_error:
            raise ModelIntegrityError(self._identity_error)
        if self.upstream_model is None:
            await self.probe()
        assert self.upstream_model is not None
        return self.upstream_model

    async def _post(self, target: str, body: bytes, request_id: str,
                    trace: dict[str, str]) -> Response:
        headers = {"content-type": "application/json", "x-request-id": request_id,
                   **trace_headers_for_upstream(trace)}
        try:
            resp = await self.pool.request("POST", target, body, headers,
                                           self.settings.first_byte_timeout_s)
        except TimeoutError as exc:
            raise UpstreamTimeoutError(
                f"model {self.name}: no response within {self.settings.first_byte_timeout_s}s"
            ) from exc
        except ConnectError as exc:
            raise self._unreachable(ServiceUnavailableError(
                f"model {self.name}: cannot connect to upstream: "
                f"{redact_error(exc.os_error or exc)}", retry_after=1)) from exc
        except ClientError as exc:
            raise UpstreamError(
                f"model {self.name}: upstream connection failed: {redact_error(exc)}") from exc
        self.reached = True
        if resp.status != 200:
            try:
                payload = await resp.read()
            except (ClientError, TimeoutError):
                payload = b""
            finally:
                resp.release()
            raise self.map_error(resp.status, payload, resp.headers)
        return resp

    async def _read_json(self, resp: Response) -> tuple[Any, bytes]:
        """A whole JSON answer and its bytes, failures mapped."""
        try:
            if resp.content_type != "application/json":
                raise UpstreamError(f"model {self.name}: upstream answered {resp.content_type!r}, "
                                    "not JSON")
            wire = await resp.read()
            data = orjson.loads(wire)
        except orjson.JSONDecodeError as exc:
            raise UpstreamError(f"model {self.name}: upstream sent invalid JSON") from exc
        except TimeoutError as exc:
            raise UpstreamTimeoutError(f"model {self.name}: upstream response timed out") from exc
        except ClientError as exc:
            raise UpstreamError(
                f"model {self.name}: upstream response failed: {redact_error(exc)}") from exc
        finally:
            resp.release()
        return data, wire

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        started, started_at = time.perf_counter(), time.time()
        resp = await self._open(request, stream=False)
        data, wire = await self._read_json(resp)
        if not isinstance(data, dict):
            raise UpstreamError(f"model {self.name}: upstream sent a malformed completion")
        choices, usage, prompt_ids, extra = parse_response(data, request.kind == "chat")
        total = time.perf_counter() - started
        return GenerationResult(
            model=self._tuple, choices=choices, usage=usage,
            timing=Timing(started_at=started_at, first_token_s=None, total_s=total),
            prompt_token_ids=prompt_ids, extra=extra,
            runtime={"upstream": self.shown_url, "upstream_model": self.upstream_model},
            raw_body=wire,
        )

    async def embed(self, request: EmbeddingRequest) -> EmbeddingResult:
        """``/v1/embeddings`` upstream: the batch with the client's other fields, as sent."""
        body = {**request.passthrough, "model": await self._upstream_model(),
                "input": request.input}
        resp = await self._post(f"{self._prefix}/embeddings", orjson.dumps(body),
                                request.request_id, request.trace_headers)
        data, _ = await self._read_json(resp)
        embeddings, usage, extra = parse_embeddings(data, len(request.input))
        return EmbeddingResult(self._tuple, embeddings, usage, extra)

    def stream(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        chat, lines = request.kind == "chat", SseLines()

        def take(data: bytes) -> Read[GenerationChunk]:
            read: Read[GenerationChunk] = Read()
            items = read.items
            for line in lines.split(data):
                if not line.startswith(b"data:"):
                    continue
                payload = line[5:].strip()
                if payload == b"[DONE]":
                    read.done = True
                    break
                try:
                    items += parse_chunk(orjson.loads(payload), chat)
                except orjson.JSONDecodeError as exc:
                    read.failure = self.invalid_event(exc)
                    break
                except UpstreamError as exc:
                    read.failure = exc
                    break
            return read

        return self.chunks(lambda: self._open(request, stream=True), take)

    async def chunks(self, opening: Callable[[], Awaitable[Response]],
                     take: Callable[[bytes], Read[GenerationChunk]]
                     ) -> AsyncIterator[GenerationChunk]:
        """A generation stream's chunks, its response opened by ``opening`` at the first
        (:meth:`reads`), those of one read marked as delivered together; a read's failure raised
        after its chunks. (The backend's ``stream`` itself: one generator between the
        upstream's reads and the caller, not two.)"""
        resp = await opening()
        async with aclosing(self.reads(resp, take)) as reads:
            async for read in reads:
                # Chunks that arrived together are marked so that they are sent on together;
                # those before a failure are delivered before it.
                items, failure = read.items, read.failure
                if failure is not None or len(items) > 1:
                    for chunk in items if failure is not None else items[:-1]:
                        chunk.buffered = True
                for chunk in items:
                    yield chunk
                if failure is not None:
                    raise failure

    def invalid_event(self, exc: Exception) -> UpstreamError:
        failure = UpstreamError(f"model {self.name}: upstream sent an invalid SSE event")
        failure.__cause__ = exc
        return failure

    async def reads(self, resp: Response, take: Callable[[bytes], Read[T]]
                    ) -> AsyncGenerator[Read[T], None]:
        """An upstream's event stream, one read at a time as ``take`` makes it out, with the
        stream's life in one place: refused unless it is an event stream; timeouts and
        connection failures mapped; read to its end, the connection is drained back to the
        pool, else (client gone, a failure, the caller stopped) closed, which cancels the
        upstream request; a stream that ends before its end was seen is an error. Iterate it
        under ``contextlib.aclosing`` so that it closes when the caller stops."""
        done = False
        try:
            if resp.content_type != "text/event-stream":
                raise UpstreamError(f"model {self.name}: upstream answered {resp.content_type!r} "
                                    "to a streaming request")
            async for data in resp.iter_any():
                read = take(data)
                done = read.done
                yield read
                if done or read.failure is not None:
                    break
        except TimeoutError as exc:
            raise UpstreamTimeoutError(f"model {self.name}: upstream stream timed out") from exc
        except ClientError as exc:
            raise UpstreamError(
                f"model {self.name}: upstream stream failed: {redact_error(exc)}") from exc
        finally:
            if done:
                await _drain(resp)
            else:
                resp.close()
        if not done:
            raise UpstreamError(f"model {self.name}: upstream closed the stream mid-answer")

    # -- the upstream's own /v1/responses (responses = "forward") ---------------------------

    async def _open_responses(self, body: dict[str, Any], request_id: str,
                              trace: dict[str, str]) -> tuple[Response, dict[str, Any]]:
        sent = {**body, "model": await self._upstream_model()}
        resp = await self._post(f"{self._prefix}/responses", orjson.dumps(sent), request_id,
                                trace)
        return resp, sent

    def forwarded_result(self, sent: dict[str, Any], response: dict[str, Any],
                         started: float, started_at: float,
                         first_event_s: float | None = None) -> GenerationResult:
        """A forwarded call as a model call's result: the text and usage read from the
        upstream's response object, which is kept whole under ``extra["response"]`` and the
        body sent under ``runtime["forwarded"]`` (records show both)."""
        return GenerationResult(
            model=self._tuple, choices=[choice_of(response)], usage=usage_of(response),
            timing=Timing(started_at=started_at, first_token_s=first_event_s,
                          total_s=time.perf_counter() - started),
            extra={"response": response},
            runtime={"upstream": self.shown_url, "upstream_model": self.upstream_model,
                     "forwarded": {"path": "/v1/responses", "body": sent}},
        )

    async def respond(self, body: dict[str, Any], request_id: str, trace: dict[str, str]
                      ) -> GenerationResult:
        """``body`` (a Responses request) to the upstream's ``/v1/responses``, not streamed."""
        started, started_at = time.perf_counter(), time.time()
        resp, sent = await self._open_responses(body, request_id, trace)
        data, _ = await self._read_json(resp)
        if not isinstance(data, dict) or data.get("object") != "response":
            raise UpstreamError(f"model {self.name}: upstream sent a malformed response object")
        return self.forwarded_result(sent, data, started, started_at)

    async def respond_stream(self, body: dict[str, Any], request_id: str,
                             trace: dict[str, str]) -> AsyncIterator[Event]:
        """``body`` streamed at the upstream's ``/v1/responses``: its events as they come, to
        the one that ends the response (``response.completed``, ``.incomplete``, ``.failed``)."""
        resp, _ = await self._open_responses(body, request_id, trace)
        reader = EventReader(self.name)

        def take(data: bytes) -> Read[Event]:
            events = reader.feed(data)
            return Read(events, done=any(event.type in TERMINAL_EVENTS for event in events))

        async with aclosing(self.reads(resp, take)) as reads:
            async for read in reads:
                for event in read.items:
                    yield event


async def _drain(resp: Response) -> None:
    """After ``[DONE]``: read what is left of the body (its chunked terminator, usually there
    already) so the connection can be reused, without waiting on an upstream that lingers."""
    if resp.complete:
        resp.release()
        return
    try:
        async with asyncio.timeout(0.5):
            async for _ in resp.iter_any():
                pass
    except (TimeoutError, ClientError):
        resp.close()
    else:
        resp.release()
