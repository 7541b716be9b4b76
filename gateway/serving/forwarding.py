"""The Responses API forwarded: a ``/v1/responses`` request to a model with ``responses =
"forward"`` goes to the upstream's own Responses API as the client sent it (retries and
fallbacks as for any call; a fallback must forward too), and its answer or events come back as
the upstream sent them, recorded from the response the last event carries."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from gateway import protocol
from gateway.backends.http import HTTPBackend
from gateway.backends.responses_wire import TERMINAL_EVENTS, Event, failure_events
from gateway.kernel.backend import Backend
from gateway.kernel.errors import TiergateError, UpstreamError, internal_error
from gateway.kernel.generation import ChoiceResult, GenerationRequest, Usage
from gateway.listener import RequestContext
from gateway.models.cost import usage_so_far
from gateway.models.dispatch import Dispatcher, aclose
from gateway.models.resilience import GuardedBackend
from gateway.serving.accounting import COST_HEADER, Accounting, Served, cost_header
from gateway.telemetry.instruments import clip

log = logging.getLogger("tiergate.serving")


def _forwarder(backend: Backend) -> HTTPBackend:
    if not isinstance(backend, HTTPBackend) or not backend.forwards_responses:
        raise UpstreamError(f"model {backend.name} does not forward /v1/responses")
    return backend


def _guarded(backend: Backend) -> GuardedBackend:
    assert isinstance(backend, GuardedBackend)
    return backend


class ResponsesForwarding:
    """Forwarded Responses requests of one serving object."""

    def __init__(self, dispatcher: Dispatcher, accounting: Accounting) -> None:
        self.dispatcher = dispatcher
        self.accounting = accounting

    async def forward(self, req: protocol.ResponsesRequest, gen: GenerationRequest,
                      ctx: RequestContext, span: Any) -> Served:
        """The client's body to the upstream's ``/v1/responses``; its answer, or its events
        relayed as they come."""
        body = req.model_dump(mode="json", exclude_unset=True)
        gen.sampling.seed = req.seed  # the upstream draws its own: none is sent or reported
        accounting = self.accounting
        if not req.stream:
            accounting.schedule_started(ctx, req, gen)
            result = await self.dispatcher.call(req.model, gen, lambda backend: _guarded(
                backend).call(lambda inner: _forwarder(inner).respond(
                    body, gen.request_id, gen.trace_headers)))
            accounting.finish(span, ctx, req.model, result.model.name, 200, None, result.usage)
            costs = accounting.completed(ctx, req, gen, [result], None)
            headers = accounting.headers(result.model, gen, None)
            headers[COST_HEADER] = cost_header(costs)
            return Served(headers=headers, body=result.extra["response"])

        async def open_events(backend: Backend
                              ) -> tuple[HTTPBackend, Event, AsyncIterator[Event]]:
            inner = _forwarder(_guarded(backend).inner)
            events = _guarded(backend).call_stream(lambda _: inner.respond_stream(
                body, gen.request_id, gen.trace_headers))
            try:
                return inner, await anext(events), events
            except BaseException:
                await aclose(events)
                raise

        started, started_at = time.perf_counter(), time.time()
        backend, first, events = await self.dispatcher.call(req.model, gen, open_events)
        return Served(headers=accounting.headers(backend.describe(), gen, None),
                      stream=self._relay(backend, body, first, events, gen, req, ctx, span,
                                         (started, started_at)))

    async def _relay(self, backend: HTTPBackend, body: dict[str, Any], first: Event,
                     events: AsyncIterator[Event], gen: GenerationRequest,
                     req: protocol.ResponsesRequest, ctx: RequestContext, span: Any,
                     started: tuple[float, float]) -> AsyncIterator[bytes]:
        """A forwarded stream's events, as the upstream sent them; the call recorded from the
        response its last event carries, before that event goes out."""
        accounting = self.accounting
        status = 200
        error: BaseException | None = None
        usage: Usage | None = None
        first_s: float | None = None  # the first output text's, from the call's start
        deltas: list[str] = []  # the output text so far: what a stream cut short accounts
        event, sequence, response = first, -1, None
        accounting.schedule_started(ctx, req, gen)
        try:
            while True:
                number = event.data.get("sequence_number")
                sequence = number if isinstance(number, int) else sequence + 1
                if event.type == "response.output_text.delta":
                    if first_s is None:
                        first_s = time.perf_counter() - started[0]
                    if isinstance(delta := event.data.get("delta"), str):
                        deltas.append(delta)
                response = event.data.get("response", response)
                if event.type in TERMINAL_EVENTS and isinstance(response, dict):
                    result = backend.forwarded_result(
                        {**body, "model": backend.upstream_model}, response, *started, first_s)
                    usage = result.usage
                    accounting.completed(ctx, req, gen, [result], None)
                yield event.raw
                try:
                    event = await anext(events)
                except StopAsyncIteration:
                    break
        except TiergateError as exc:
            log.warning("request %s: stream failed: %s", gen.request_id, clip(exc.message))
            status, error = exc.status, exc
            if usage is None:  # before its terminal event: what was generated is accounted
                usage = self._cut_short(backend, body, response, deltas, gen, req, ctx,
                                        started, first_s, status)
            yield failure_events(exc.body(), sequence, response)
        except Exception as exc:
            log.exception("request %s: stream failed", gen.request_id)
            status, error = 500, exc
            if usage is None:
                usage = self._cut_short(backend, body, response, deltas, gen, req, ctx,
                                        started, first_s, status)
            yield failure_events(internal_error().body(), sequence, response)
        except BaseException as exc:  # the client went away (cancelled / generator closed)
            status, error = 499, exc
            if usage is None:
                usage = self._cut_short(backend, body, response, deltas, gen, req, ctx,
                                        started, first_s, status)
            raise
        finally:
            await aclose(events)
            accounting.finish(span, ctx, req.model, backend.name, status,
                              None if first_s is None else first_s + (started[0] - ctx.received),
                              usage, error)

    def _cut_short(self, backend: HTTPBackend, body: dict[str, Any],
                   response: dict[str, Any] | None, deltas: list[str],
                   gen: GenerationRequest, req: protocol.ResponsesRequest,
                   ctx: RequestContext, started: tuple[float, float],
                   first_s: float | None, status: int) -> Usage | None:
        """A forwarded stream that ended before its terminal event: the output text it relayed
        is recorded with ``status`` and priced (usage counted here, one token per delta); the
        usage, or None when nothing was generated."""
        if not deltas:
            return None
        try:
            result = backend.forwarded_result({**body, "model": backend.upstream_model},
                                              response if isinstance(response, dict) else {},
                                              *started, first_s)
            result.choices = [ChoiceResult(index=0, text="".join(deltas), finish_reason=None)]
            result.usage, estimated = usage_so_far(None, result, [len(deltas)], gen)
            self.accounting.completed(ctx, req, gen, [result], None, status, estimated)
        except Exception:  # accounting must never turn a cut stream into another error
            log.exception("request %s: the cut stream was not accounted", gen.request_id)
            return None
        return result.usage
