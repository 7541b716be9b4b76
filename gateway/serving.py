"""The serving object: an OpenAI request in, a served response out.

Routes parse and authorize; this module resolves the model, applies gateway policy (the effective
seed), calls the backend and shapes the answer. It never touches HTTP objects: it returns a
:class:`Served` (a body, or a stream of SSE bytes) with the headers to send.
"""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from typing import Any

from gateway import protocol
from gateway.backends.http import HTTPBackend
from gateway.backends.responses_wire import TERMINAL_EVENTS, Event, failure_events
from gateway.kernel.backend import Backend
from gateway.kernel.errors import (
    InvalidRequestError,
    TiergateError,
    UpstreamError,
    internal_error,
)
from gateway.kernel.generation import (
    ChoiceResult,
    GenerationChunk,
    GenerationRequest,
    GenerationResult,
    StreamAccumulator,
    Usage,
    prompt_batch,
)
from gateway.kernel.modeltuple import ModelTuple
from gateway.listener import CompletedRequest, Listeners, RequestContext, RequestListener
from gateway.models.cost import CallCost, PriceBook, usage_so_far
from gateway.models.dispatch import Dispatcher, aclose
from gateway.models.registry import ModelRegistry
from gateway.models.resilience import GuardedBackend
from gateway.settings import Settings
from gateway.telemetry.instruments import Telemetry, clip
from router.decision import Decision
from router.policy import Route, Router
from router.strategies import get_strategy

log = logging.getLogger("tiergate.serving")

SEED_BOUND = 2**31
"""Drawn seeds stay below 2**31: every engine (vLLM, llama.cpp, torch) and JSON client takes it."""


@dataclass(slots=True)
class Served:
    """A response ready to send: ``body`` (JSON) or ``stream`` (SSE bytes), and headers."""

    headers: dict[str, str]
    body: dict[str, Any] | None = None
    stream: AsyncIterator[bytes] | None = None


@dataclass(slots=True)
class Plan:
    """How a request will be answered: by ``model``, or by ``ready`` (an answer its route's
    strategy already accepted: a cascade's small answer), after the calls in ``prior`` (answers
    produced and not sent: a cascade's rejected small answer)."""

    model: str
    decision: Decision | None = None
    ready: GenerationResult | None = None
    prior: list[GenerationResult] = field(default_factory=list)


class OpenAIServing:
    """Chat completions and completions over the model registry."""

    def __init__(self, settings: Settings, registry: ModelRegistry, telemetry: Telemetry,
                 router: Router | None = None) -> None:
        self.settings = settings
        self.registry = registry
        self.telemetry = telemetry
        self.router = router
        self.dispatcher = Dispatcher(registry, telemetry)
        self.prices = PriceBook(settings.models)
        self.listeners = Listeners()
        self._seeds = random.Random(secrets.randbits(128))
        """Draws effective seeds: seeded from the OS once (a seed needs to be recorded, not
        secret; ``secrets`` cost a system call per request)."""

    def add_listener(self, listener: RequestListener) -> None:
        self.listeners.add(listener)

    def _headers(self, model: ModelTuple, gen: GenerationRequest,
                 decision: Decision | None) -> dict[str, str]:
        headers = {"x-tiergate-model": model.header_value}
        if decision is not None:
            headers["x-tiergate-route"] = decision.route
            headers["x-tiergate-escalated"] = "true" if decision.escalated else "false"
            if decision.score is not None:
                headers["x-tiergate-score"] = f"{decision.score:.6f}"
        if gen.sampling.seed is not None and model.takes_seed:
            headers["x-tiergate-seed"] = str(gen.sampling.seed)
        for listener in self.listeners.heading:
            headers.update(listener.headers(gen))
        return headers

    def _completed(self, ctx: RequestContext, req: protocol.OpenAIRequest,
                   gen: GenerationRequest, results: list[GenerationResult],
                   decision: Decision | None, status: int = 200,
                   estimated: bool = False) -> list[CallCost]:
        """Price every call of the request (``estimated``: the last call's usage was counted
        here, :func:`~gateway.models.cost.usage_so_far`), count the cost, tell the listeners."""
        costs = [self.prices.call(r, estimated and i == len(results) - 1)
                 for i, r in enumerate(results)]
        for cost in costs:
            self.telemetry.count_cost(req.model, cost.model, ctx.caller, cost.usd)
        if not self.listeners.completing:
            return costs
        done = CompletedRequest(ctx, req.model, req, gen, results, decision,
                                stream=bool(req.stream), status=status, costs=costs)
        for listener in self.listeners.completing:
            try:
                listener.completed(done)
            except Exception:  # a listener's bug must never fail the request
                log.exception("request %s: listener %s failed", ctx.request_id, listener.name)
        return costs

    def _schedule_started(self, ctx: RequestContext, req: protocol.OpenAIRequest,
                          gen: GenerationRequest) -> None:
        """Tell the listeners once the request waits for its model (not before the call is
        sent, not after the answer is back unless the model never waited)."""
        if self.listeners.starting:
            asyncio.get_running_loop().call_soon(self._started, ctx, req, gen)

    def _started(self, ctx: RequestContext, req: protocol.OpenAIRequest,
                 gen: GenerationRequest) -> None:
        for listener in self.listeners.starting:
            try:
                listener.started(ctx, req, gen)
            except Exception:  # the listener does the work itself when the request completes
                log.exception("request %s: listener %s failed to prepare", ctx.request_id,
                              listener.name)

    def _prepare(self, req: protocol.OpenAIRequest, ctx: RequestContext) -> GenerationRequest:
        gen = req.to_generation_request(ctx.request_id)
        gen.trace_headers = ctx.trace_headers
        sampling = gen.sampling
        if sampling.seed is None and not sampling.greedy and self.settings.default_seed_draw:
            # The effective seed: drawn here and passed down, so a sampled answer can be replayed.
            sampling.seed = self._seeds.randrange(SEED_BOUND)
        return gen

    def _route(self, name: str) -> Route | None:
        route = self.router.routes.get(name) if self.router is not None else None
        if route is None:
            self.registry.get(name)  # an unknown model is a 404 before anything else
        return route

    async def _plan(self, route: Route | None, name: str, gen: GenerationRequest) -> Plan:
        if route is None:
            return Plan(model=name)
        assert self.router is not None
        if prompt_batch(gen.prompt) is not None and get_strategy(route.mode).verifier_kind:
            raise InvalidRequestError(
                f"route {route.name} decides one prompt at a time: send each prompt of the "
                "batch in a request of its own", param="prompt")
        with self.telemetry.span("tiergate.route", **{"tiergate.route": route.name}):
            routed = await get_strategy(route.mode).route(self.router, route, gen,
                                                          self.dispatcher.generate)
        decision = routed.decision
        if decision.escalated:
            self.telemetry.count_escalation(route.name)
        for prior in routed.prior:  # the answering call's tokens are counted when it ends
            self.telemetry.count_tokens(prior.model.name, prior.usage.prompt_tokens,
                                        prior.usage.completion_tokens)
        return Plan(model=routed.model or decision.model, decision=decision, ready=routed.ready,
                    prior=routed.prior)

    async def create(self, req: protocol.OpenAIRequest, ctx: RequestContext) -> Served:
        span = self.telemetry.start_request_span(f"POST {ctx.operation}", ctx.trace_headers,
                                                 ctx.request_id, req.model)
        plan: Plan | None = None
        try:
            with self.telemetry.use(span):
                route = self._route(req.model)
                for listener in self.listeners.admitting:
                    listener.admit()
                gen = self._prepare(req, ctx)
                if isinstance(req, protocol.ResponsesRequest) and route is None \
                        and getattr(self.registry.settings_of(req.model), "responses",
                                    "translate") == "forward":
                    return await self._forward(req, gen, ctx, span)
                if not req.stream:
                    self._schedule_started(ctx, req, gen)
                plan = await self._plan(route, req.model, gen)
                if req.stream:
                    return await self._stream(req, gen, ctx, span, plan)
                result = plan.ready or await self.dispatcher.generate(plan.model, gen)
            answer = _for_client(result, gen, plan.prior)
        except TiergateError as exc:
            self._finish(span, ctx, req.model, req.model, exc.status, None, None, exc)
            self._count_unanswered(req, ctx, plan)
            if isinstance(req, protocol.ResponsesRequest):
                exc.param = protocol.responses_param(exc.param)
            raise
        except BaseException as exc:
            self._finish(span, ctx, req.model, req.model, 500, None, None, exc)
            self._count_unanswered(req, ctx, plan)
            raise
        if isinstance(req, protocol.ResponsesRequest):
            body = protocol.response_object(req, gen, ctx.request_id, result.model.name,
                                            result=answer)
        else:
            build = protocol.chat_completion if gen.kind == "chat" else protocol.completion
            body = build(answer, ctx.request_id, result.model.name, gen.return_token_ids)
        self._finish(span, ctx, req.model, result.model.name, 200, None, result.usage)
        costs = self._completed(ctx, req, gen, [*plan.prior, result], plan.decision)
        headers = self._headers(result.model, gen, plan.decision)
        headers[COST_HEADER] = cost_header(costs)
        return Served(headers=headers, body=body)

    async def _forward(self, req: protocol.ResponsesRequest, gen: GenerationRequest,
                       ctx: RequestContext, span: Any) -> Served:
        """A Responses request to a model with ``responses = "forward"``: the client's body to
        the upstream's own ``/v1/responses`` (retries and fallbacks as for any call; a fallback
        must forward too), the upstream's answer or events relayed as they come."""
        body = req.model_dump(mode="json", exclude_unset=True)
        gen.sampling.seed = req.seed  # the upstream draws its own: none is sent or reported

        def forwarder(backend: Backend) -> HTTPBackend:
            if not isinstance(backend, HTTPBackend) or not backend.forwards_responses:
                raise UpstreamError(f"model {backend.name} does not forward /v1/responses")
            return backend

        def guarded(backend: Backend) -> GuardedBackend:
            assert isinstance(backend, GuardedBackend)
            return backend

        if not req.stream:
            self._schedule_started(ctx, req, gen)
            result = await self.dispatcher.call(req.model, gen, lambda backend: guarded(
                backend).call(lambda inner: forwarder(inner).respond(
                    body, gen.request_id, gen.trace_headers)))
            self._finish(span, ctx, req.model, result.model.name, 200, None, result.usage)
            costs = self._completed(ctx, req, gen, [result], None)
            headers = self._headers(result.model, gen, None)
            headers[COST_HEADER] = cost_header(costs)
            return Served(headers=headers, body=result.extra["response"])

        async def open_events(backend: Backend
                              ) -> tuple[HTTPBackend, Event, AsyncIterator[Event]]:
            inner = forwarder(guarded(backend).inner)
            events = guarded(backend).call_stream(lambda _: inner.respond_stream(
                body, gen.request_id, gen.trace_headers))
            try:
                return inner, await anext(events), events
            except BaseException:
                await aclose(events)
                raise

        started, started_at = time.perf_counter(), time.time()
        backend, first, events = await self.dispatcher.call(req.model, gen, open_events)
        return Served(headers=self._headers(backend.describe(), gen, None),
                      stream=self._relay(backend, body, first, events, gen, req, ctx, span,
                                         (started, started_at)))

    async def _relay(self, backend: HTTPBackend, body: dict[str, Any], first: Event,
                     events: AsyncIterator[Event], gen: GenerationRequest,
                     req: protocol.ResponsesRequest, ctx: RequestContext, span: Any,
                     started: tuple[float, float]) -> AsyncIterator[bytes]:
        """A forwarded stream's events, as the upstream sent them; the call recorded from the
        response its last event carries, before that event goes out."""
        status = 200
        error: BaseException | None = None
        usage: Usage | None = None
        first_s: float | None = None  # the first output text's, from the call's start
        deltas: list[str] = []  # the output text so far: what a stream cut short accounts
        event, sequence, response = first, -1, None
        self._schedule_started(ctx, req, gen)
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
                    self._completed(ctx, req, gen, [result], None)
                yield event.raw
                try:
                    event = await anext(events)
                except StopAsyncIteration:
                    break
        except TiergateError as exc:
            log.warning("request %s: stream failed: %s", gen.request_id, clip(exc.message))
            status, error = exc.status, exc
            if usage is None:  # before its terminal event: what was generated is accounted
                usage = self._relay_cut_short(backend, body, response, deltas, gen, req, ctx,
                                              started, first_s, status)
            yield failure_events(exc.body(), sequence, response)
        except Exception as exc:
            log.exception("request %s: stream failed", gen.request_id)
            status, error = 500, exc
            if usage is None:
                usage = self._relay_cut_short(backend, body, response, deltas, gen, req, ctx,
                                              started, first_s, status)
            yield failure_events(internal_error().body(), sequence, response)
        except BaseException as exc:  # the client went away (cancelled / generator closed)
            status, error = 499, exc
            if usage is None:
                usage = self._relay_cut_short(backend, body, response, deltas, gen, req, ctx,
                                              started, first_s, status)
            raise
        finally:
            await aclose(events)
            self._finish(span, ctx, req.model, backend.name, status,
                         None if first_s is None else first_s + (started[0] - ctx.received),
                         usage, error)

    def _relay_cut_short(self, backend: HTTPBackend, body: dict[str, Any],
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
            self._completed(ctx, req, gen, [result], None, status, estimated)
        except Exception:  # accounting must never turn a cut stream into another error
            log.exception("request %s: the cut stream was not accounted", gen.request_id)
            return None
        return result.usage

    async def embed(self, req: protocol.EmbeddingsRequest, ctx: RequestContext) -> Served:
        """``/v1/embeddings``: one model (a route chooses between generating tiers), its
        fallbacks and retries as for generation; not recorded."""
        span = self.telemetry.start_request_span(f"POST {ctx.operation}", ctx.trace_headers,
                                                 ctx.request_id, req.model)
        try:
            with self.telemetry.use(span):
                if self._route(req.model) is not None:
                    raise InvalidRequestError(f"{req.model} is a route: name an embedding "
                                              "model", param="model")
                request = req.to_embedding_request(ctx.request_id)
                request.trace_headers = ctx.trace_headers
                result = await self.dispatcher.embed(req.model, request)
        except TiergateError as exc:
            self._finish(span, ctx, req.model, req.model, exc.status, None, None, exc)
            raise
        except BaseException as exc:
            self._finish(span, ctx, req.model, req.model, 500, None, None, exc)
            raise
        body = protocol.embedding_list(result, result.model.name, req.encoding_format)
        self._finish(span, ctx, req.model, result.model.name, 200, None, result.usage)
        return Served(headers={"x-tiergate-model": result.model.header_value}, body=body)

    def _finish(self, span: Any, ctx: RequestContext, route: str, model: str, status: int,
                ttft_s: float | None, usage: Usage | None,
                error: BaseException | None = None) -> None:
        self.telemetry.observe_request(
            route, model, status, time.perf_counter() - ctx.received, ttft_s,
            usage.prompt_tokens if usage else 0, usage.completion_tokens if usage else 0)
        self.telemetry.end_span(span, status, error)

    async def _stream(self, req: protocol.OpenAIRequest, gen: GenerationRequest,
                      ctx: RequestContext, span: Any, plan: Plan) -> Served:
        if plan.ready is not None:  # a cascade's accepted answer, verified before any byte
            model = plan.ready.model
            first, rest = None, _replay(_for_client(plan.ready, gen, plan.prior))
        else:
            # The first chunk arrives before the 200 is committed: a failure up to there is an
            # ordinary HTTP error, after retries and fallbacks (gateway.models.dispatch).
            opened = await self.dispatcher.open_stream(plan.model, gen)
            model, first, rest = opened.backend.describe(), opened.first, opened.rest
        chunks: protocol.StreamShape
        if isinstance(req, protocol.ResponsesRequest):
            chunks = protocol.ResponseStream(req, gen, gen.request_id, model.name)
        else:
            chunks = protocol.ChunkBuilder(gen.kind, gen.request_id, model.name,
                                           gen.return_token_ids)
        events = self._events(rest, first, chunks, model, gen, req, ctx, span, plan)
        return Served(headers=self._headers(model, gen, plan.decision),
                      stream=events)

    async def _events(
        self,
        upstream: AsyncIterator[GenerationChunk],
        first: GenerationChunk | None,
        chunks: protocol.StreamShape,
        model: ModelTuple,
        gen: GenerationRequest,
        req: protocol.OpenAIRequest,
        ctx: RequestContext,
        span: Any,
        plan: Plan,
    ) -> AsyncIterator[bytes]:
        accumulator = StreamAccumulator(model, gen.sampling.n)
        status: int = 200
        error: BaseException | None = None
        accounted = False  # the request went to the listeners (at most once)
        # Events of chunks that arrived together: sent in one piece.
        held: list[bytes] = [opening] if (opening := chunks.start()) else []
        # Listeners start when the stream first waits, which is after its first bytes went out.
        self._schedule_started(ctx, req, gen)
        try:
            if first is not None:
                accumulator.add(first)
                if event := chunks.event(first):
                    held.append(event)
                if not first.buffered and held:
                    yield b"".join(held)
                    held.clear()
            async for chunk in upstream:
                accumulator.add(chunk)
                if event := chunks.event(chunk):
                    held.append(event)
                if not chunk.buffered and held:
                    yield b"".join(held) if len(held) > 1 else held[0]
                    held.clear()
            result = accumulator.result()
            if plan.ready is not None:  # replayed here: the model call's time is its own
                result.timing = plan.ready.timing
            usage = billed(result.usage, plan.prior)
            held.append(chunks.end(result, usage if req.include_usage
                                   or isinstance(req, protocol.ResponsesRequest) else None))
            # Recorded before the stream's end goes out.
            accounted = True
            self._completed(ctx, req, gen, [*plan.prior, result], plan.decision)
            yield b"".join(held)
            held.clear()
        except TiergateError as exc:
            log.warning("request %s: stream failed: %s", gen.request_id, clip(exc.message))
            status, error = exc.status, exc
            if not accounted:
                self._cut_short(accumulator, gen, req, ctx, plan, status)
            yield b"".join([*held, chunks.error(exc.body())])
        except Exception as exc:
            log.exception("request %s: stream failed", gen.request_id)
            status, error = 500, exc
            if not accounted:
                self._cut_short(accumulator, gen, req, ctx, plan, status)
            yield b"".join([*held, chunks.error(internal_error().body())])
        except BaseException as exc:  # the client went away (cancelled / generator closed)
            status, error = 499, exc
            if not accounted:
                self._cut_short(accumulator, gen, req, ctx, plan, status)
            raise
        finally:
            await aclose(upstream)
            ttft = accumulator.first_token_s
            self._finish(span, ctx, req.model, model.name, status,
                         None if ttft is None else ttft + (accumulator.started - ctx.received),
                         accumulator.usage, error)

    def _count_unanswered(self, req: protocol.OpenAIRequest, ctx: RequestContext,
                          plan: Plan | None) -> None:
        """The calls made for a request that then failed (a cascade's small answer, before the
        large call failed): no record, but their cost is counted in the metrics."""
        for prior in plan.prior if plan is not None else ():
            cost = self.prices.call(prior)
            self.telemetry.count_cost(req.model, cost.model, ctx.caller, cost.usd)

    def _cut_short(self, accumulator: StreamAccumulator, gen: GenerationRequest,
                   req: protocol.OpenAIRequest, ctx: RequestContext, plan: Plan,
                   status: int) -> None:
        """A stream that ended before its end (the client went away, the upstream failed):
        what was generated is still accounted — recorded with ``status`` and priced, its usage
        counted here when the model never reported it."""
        if not any(accumulator.pieces) and not plan.prior and plan.ready is None \
                and accumulator.usage is None:
            return  # nothing was generated: nothing to account
        try:
            if plan.ready is not None:  # a cascade's answer, whole before the stream began
                result, estimated = plan.ready, False
            else:
                result = accumulator.result()
                result.usage, estimated = usage_so_far(accumulator.usage, result,
                                                       accumulator.pieces, gen)
            accumulator.usage = result.usage  # the request's metrics count the same tokens
            self._completed(ctx, req, gen, [*plan.prior, result], plan.decision, status,
                            estimated)
        except Exception:  # accounting must never turn a cut stream into another error
            log.exception("request %s: the cut stream was not accounted", gen.request_id)


COST_HEADER = "x-tiergate-cost-usd"
"""A whole answer's cost in USD, every call of it (a stream's headers go out before its cost is
known: its cost is in its record and the metrics; docs/cost.md)."""


def cost_header(costs: list[CallCost]) -> str:
    """The cost as a plain decimal (no exponent), to the 1e-10 dollar."""
    text = f"{sum(c.usd for c in costs):.10f}".rstrip("0")
    return text + "0" if text.endswith(".") else text


async def _replay(result: GenerationResult) -> AsyncIterator[GenerationChunk]:
    """A finished result as a stream: one chunk per choice, then the usage."""
    for choice in result.choices:
        yield GenerationChunk(index=choice.index, text=choice.text, token_ids=choice.token_ids,
                              logprobs=choice.logprobs, finish_reason=choice.finish_reason,
                              stop_reason=choice.stop_reason, extra=choice.extra)
    yield GenerationChunk(index=None, usage=result.usage,
                          prompt_token_ids=result.prompt_token_ids,
                          rendered_prompt=result.rendered_prompt, runtime=result.runtime)


def billed(usage: Usage, prior: list[GenerationResult]) -> Usage:
    """The usage a response reports: every model call made for it (a cascade that escalated:
    the small answer's tokens and the large one's). The answering call's own usage details
    (cached tokens, ...) stand only when it was the only call."""
    if not prior:
        return usage
    return Usage(usage.prompt_tokens + sum(r.usage.prompt_tokens for r in prior),
                 usage.completion_tokens + sum(r.usage.completion_tokens for r in prior))


def _for_client(result: GenerationResult, request: GenerationRequest,
                prior: list[GenerationResult]) -> GenerationResult:
    """The result as the client gets it: without the logprobs a cascade asked for on its own
    account, with the usage of every call (:func:`billed`)."""
    strip = request.sampling.logprobs is None and any(c.logprobs is not None
                                                      for c in result.choices)
    if not strip and not prior:
        return result
    choices = [replace(c, logprobs=None) for c in result.choices] if strip else result.choices
    return replace(result, choices=choices, usage=billed(result.usage, prior))
