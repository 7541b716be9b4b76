"""The serving object: an OpenAI request in, a served response out.

Routes parse and authorize; this module resolves the model, applies gateway policy (the effective
seed), plans the calls (a route's strategy), calls the backend and shapes the answer. It never
touches HTTP objects: it returns a :class:`~gateway.serving.accounting.Served` (a body, or a
stream of SSE bytes) with the headers to send.
"""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
from typing import Any

from gateway import protocol
from gateway.kernel.errors import InvalidRequestError, TiergateError
from gateway.kernel.generation import GenerationRequest, prompt_batch
from gateway.listener import Listeners, RequestContext, RequestListener
from gateway.models.cost import PriceBook
from gateway.models.dispatch import Dispatcher
from gateway.models.registry import ModelRegistry
from gateway.serving.accounting import COST_HEADER, Accounting, Served, cost_header
from gateway.serving.forwarding import ResponsesForwarding
from gateway.serving.streams import Plan, for_client, relay, replay
from gateway.settings import Settings
from gateway.telemetry.instruments import Telemetry
from router.policy import Route, Router
from router.strategies import get_strategy

log = logging.getLogger("tiergate.serving")

SEED_BOUND = 2**31
"""Drawn seeds stay below 2**31: every engine (vLLM, llama.cpp, torch) and JSON client takes it."""


class OpenAIServing:
    """Chat completions, completions, responses and embeddings over the model registry."""

    def __init__(self, settings: Settings, registry: ModelRegistry, telemetry: Telemetry,
                 router: Router | None = None) -> None:
        self.settings = settings
        self.registry = registry
        self.telemetry = telemetry
        self.router = router
        self.dispatcher = Dispatcher(registry, telemetry)
        self.listeners = Listeners()
        self.accounting = Accounting(telemetry, PriceBook(settings.models), self.listeners)
        self.forwarding = ResponsesForwarding(self.dispatcher, self.accounting)
        self._seeds = random.Random(secrets.randbits(128))
        """Draws effective seeds: seeded from the OS once (a seed needs to be recorded, not
        secret; ``secrets`` cost a system call per request)."""

    def add_listener(self, listener: RequestListener) -> None:
        self.listeners.add(listener)

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
        accounting = self.accounting
        span = self.telemetry.start_request_span(f"POST {ctx.operation}", ctx.trace_headers,
                                                 ctx.request_id, req.model)
        plan: Plan | None = None
        gen: GenerationRequest | None = None
        try:
            with self.telemetry.use(span):
                route = self._route(req.model)
                for listener in self.listeners.admitting:
                    listener.admit()
                gen = self._prepare(req, ctx)
                if isinstance(req, protocol.ResponsesRequest) and route is None \
                        and getattr(self.registry.settings_of(req.model), "responses",
                                    "translate") == "forward":
                    return await self.forwarding.forward(req, gen, ctx, span)
                if not req.stream:
                    accounting.schedule_started(ctx, req, gen)
                plan = Plan(model=req.model) if route is None else \
                    await self._plan(route, req.model, gen)
                if req.stream:
                    return await self._stream(req, gen, ctx, span, plan)
                result = plan.ready or await self.dispatcher.generate(plan.model, gen)
            answer = for_client(result, gen, plan.prior)
        except TiergateError as exc:
            accounting.finish(span, ctx, req.model, req.model, exc.status, None, None, exc)
            self._failed_after_calls(req, ctx, gen, plan, exc.status)
            if isinstance(req, protocol.ResponsesRequest):
                exc.param = protocol.responses_param(exc.param)
            raise
        except BaseException as exc:
            status = 499 if isinstance(exc, asyncio.CancelledError) else 500
            accounting.finish(span, ctx, req.model, req.model, 500, None, None, exc)
            self._failed_after_calls(req, ctx, gen, plan, status)
            raise
        if isinstance(req, protocol.ResponsesRequest):
            body = protocol.response_object(req, gen, ctx.request_id, result.model.name,
                                            result=answer)
        else:
            build = protocol.chat_completion if gen.kind == "chat" else protocol.completion
            body = build(answer, ctx.request_id, result.model.name, gen.return_token_ids)
        accounting.finish(span, ctx, req.model, result.model.name, 200, None, result.usage)
        costs = accounting.completed(ctx, req, gen, [*plan.prior, result], plan.decision)
        headers = accounting.headers(result.model, gen, plan.decision)
        headers[COST_HEADER] = cost_header(costs)
        return Served(headers=headers, body=body)

    def _failed_after_calls(self, req: protocol.OpenAIRequest, ctx: RequestContext,
                            gen: GenerationRequest | None, plan: Plan | None,
                            status: int) -> None:
        """A request that failed after model calls were made for it (a cascade's small answer,
        then the large call failed): those calls are accounted as the request — priced,
        counted and recorded with ``status`` and the decision — so what they cost and why the
        route escalated are never lost. No calls: nothing to account."""
        if plan is None or gen is None or not plan.prior:
            return
        try:
            self.accounting.completed(ctx, req, gen, plan.prior, plan.decision, status)
        except Exception:  # accounting must never turn one error into another
            log.exception("request %s: the calls before its failure were not accounted",
                          ctx.request_id)

    async def _stream(self, req: protocol.OpenAIRequest, gen: GenerationRequest,
                      ctx: RequestContext, span: Any, plan: Plan) -> Served:
        if plan.ready is not None:  # a cascade's accepted answer, verified before any byte
            model = plan.ready.model
            first, rest = None, replay(for_client(plan.ready, gen, plan.prior))
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
        events = relay(self.accounting, rest, first, chunks, model, gen, req, ctx, span, plan)
        return Served(headers=self.accounting.headers(model, gen, plan.decision), stream=events)

    async def embed(self, req: protocol.EmbeddingsRequest, ctx: RequestContext) -> Served:
        """``/v1/embeddings``: one model (a route chooses between generating tiers), its
        fallbacks and retries as for generation; not recorded."""
        accounting = self.accounting
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
            accounting.finish(span, ctx, req.model, req.model, exc.status, None, None, exc)
            raise
        except BaseException as exc:
            accounting.finish(span, ctx, req.model, req.model, 500, None, None, exc)
            raise
        body = protocol.embedding_list(result, result.model.name, req.encoding_format)
        accounting.finish(span, ctx, req.model, result.model.name, 200, None, result.usage)
        return Served(headers={"x-tiergate-model": result.model.header_value}, body=body)
