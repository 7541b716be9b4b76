"""Around the model calls of a request: the headers its answer carries, its metrics and span, the
price of every call, and the listeners told when it starts and when it is complete.

The serving object (:mod:`.service`), the stream relay (:mod:`.streams`) and the forwarded
Responses API (:mod:`.forwarding`) each account a request through one :class:`Accounting`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from gateway import protocol
from gateway.kernel.generation import GenerationRequest, GenerationResult, Usage
from gateway.kernel.modeltuple import ModelTuple
from gateway.listener import CompletedRequest, Listeners, RequestContext
from gateway.models.cost import CallCost, PriceBook
from gateway.telemetry.instruments import Telemetry
from router.decision import Decision

log = logging.getLogger("tiergate.serving")

COST_HEADER = "x-tiergate-cost-usd"
"""A whole answer's cost in USD, every call of it (a stream's headers go out before its cost is
known: its cost is in its record and the metrics; docs/cost.md)."""


@dataclass(slots=True)
class Served:
    """A response ready to send: ``body`` (JSON) or ``stream`` (SSE bytes), and headers."""

    headers: dict[str, str]
    body: dict[str, Any] | None = None
    stream: AsyncIterator[bytes] | None = None


def cost_header(costs: list[CallCost]) -> str:
    """The cost as a plain decimal (no exponent), to the 1e-10 dollar."""
    usd = 0.0
    for cost in costs:
        usd += cost.usd
    if not usd:
        return "0.0"
    text = f"{usd:.10f}".rstrip("0")
    return text + "0" if text.endswith(".") else text


class Accounting:
    """Headers, metrics, prices and listeners of the requests one serving object answers."""

    def __init__(self, telemetry: Telemetry, prices: PriceBook, listeners: Listeners) -> None:
        self.telemetry = telemetry
        self.prices = prices
        self.listeners = listeners

    def headers(self, model: ModelTuple, gen: GenerationRequest,
                decision: Decision | None) -> dict[str, str]:
        """The headers of an answer from ``model`` (and its route's ``decision``)."""
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

    def completed(self, ctx: RequestContext, req: protocol.OpenAIRequest,
                  gen: GenerationRequest, results: list[GenerationResult],
                  decision: Decision | None, status: int = 200,
                  estimated: bool = False) -> list[CallCost]:
        """Price every call of the request (``estimated``: the last call's usage was counted
        here, :func:`~gateway.models.cost.usage_so_far`), count the cost, tell the listeners."""
        prices, telemetry = self.prices, self.telemetry
        if len(results) == 1:  # the common request: one call
            cost = prices.call(results[0], estimated)
            costs = [cost]
            telemetry.count_cost(req.model, cost.model, ctx.caller, cost.usd)
        else:
            costs = [prices.call(r, estimated and i == len(results) - 1)
                     for i, r in enumerate(results)]
            for cost in costs:
                telemetry.count_cost(req.model, cost.model, ctx.caller, cost.usd)
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

    def schedule_started(self, ctx: RequestContext, req: protocol.OpenAIRequest,
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

    def finish(self, span: Any, ctx: RequestContext, route: str, model: str, status: int,
               ttft_s: float | None, usage: Usage | None,
               error: BaseException | None = None) -> None:
        """The request's metrics and the end of its span."""
        self.telemetry.observe_request(
            route, model, status, time.perf_counter() - ctx.received, ttft_s,
            usage.prompt_tokens if usage else 0, usage.completion_tokens if usage else 0)
        self.telemetry.end_span(span, status, error)
