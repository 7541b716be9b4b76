"""A generated answer as the client gets it: whole (:func:`for_client`) or as a stream of SSE
events (:func:`relay`), with the usage of every call made for it (:func:`billed`); a stream cut
short still accounts what it generated."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from typing import Any

from gateway import protocol
from gateway.kernel.errors import TiergateError, internal_error
from gateway.kernel.generation import (
    GenerationChunk,
    GenerationRequest,
    GenerationResult,
    StreamAccumulator,
    Usage,
)
from gateway.kernel.modeltuple import ModelTuple
from gateway.listener import RequestContext
from gateway.models.cost import usage_so_far
from gateway.models.dispatch import aclose
from gateway.serving.accounting import Accounting
from gateway.telemetry.instruments import clip
from router.decision import Decision

log = logging.getLogger("tiergate.serving")


@dataclass(slots=True)
class Plan:
    """How a request will be answered: by ``model``, or by ``ready`` (an answer its route's
    strategy already accepted: a cascade's small answer), after the calls in ``prior`` (answers
    produced and not sent: a cascade's rejected small answer)."""

    model: str
    decision: Decision | None = None
    ready: GenerationResult | None = None
    prior: list[GenerationResult] = field(default_factory=list)


def billed(usage: Usage, prior: list[GenerationResult]) -> Usage:
    """The usage a response reports: every model call made for it (a cascade that escalated:
    the small answer's tokens and the large one's). The answering call's own usage details
    (cached tokens, ...) stand only when it was the only call."""
    if not prior:
        return usage
    return Usage(usage.prompt_tokens + sum(r.usage.prompt_tokens for r in prior),
                 usage.completion_tokens + sum(r.usage.completion_tokens for r in prior))


def for_client(result: GenerationResult, request: GenerationRequest,
               prior: list[GenerationResult]) -> GenerationResult:
    """The result as the client gets it: without the logprobs a cascade asked for on its own
    account, with the usage of every call (:func:`billed`)."""
    strip = request.sampling.logprobs is None and any(c.logprobs is not None
                                                      for c in result.choices)
    if not strip and not prior:
        return result
    choices = [replace(c, logprobs=None) for c in result.choices] if strip else result.choices
    return replace(result, choices=choices, usage=billed(result.usage, prior))


async def replay(result: GenerationResult) -> AsyncIterator[GenerationChunk]:
    """A finished result as a stream: one chunk per choice, then the usage."""
    for choice in result.choices:
        yield GenerationChunk(index=choice.index, text=choice.text, token_ids=choice.token_ids,
                              logprobs=choice.logprobs, finish_reason=choice.finish_reason,
                              stop_reason=choice.stop_reason, extra=choice.extra)
    yield GenerationChunk(index=None, usage=result.usage,
                          prompt_token_ids=result.prompt_token_ids,
                          rendered_prompt=result.rendered_prompt, runtime=result.runtime)


async def relay(
    accounting: Accounting,
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
    """The SSE bytes of a generated stream; the request is accounted before its last event
    goes out, or, cut short, with what it generated."""
    accumulator = StreamAccumulator(model, gen.sampling.n)
    status: int = 200
    error: BaseException | None = None
    accounted = False  # the request went to the listeners (at most once)
    # Events of chunks that arrived together: sent in one piece.
    held: list[bytes] = [opening] if (opening := chunks.start()) else []
    # Listeners start when the stream first waits, which is after its first bytes went out.
    accounting.schedule_started(ctx, req, gen)
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
        accounting.completed(ctx, req, gen, [*plan.prior, result], plan.decision)
        yield b"".join(held)
        held.clear()
    except TiergateError as exc:
        log.warning("request %s: stream failed: %s", gen.request_id, clip(exc.message))
        status, error = exc.status, exc
        if not accounted:
            cut_short(accounting, accumulator, gen, req, ctx, plan, status)
        yield b"".join([*held, chunks.error(exc.body())])
    except Exception as exc:
        log.exception("request %s: stream failed", gen.request_id)
        status, error = 500, exc
        if not accounted:
            cut_short(accounting, accumulator, gen, req, ctx, plan, status)
        yield b"".join([*held, chunks.error(internal_error().body())])
    except BaseException as exc:  # the client went away (cancelled / generator closed)
        status, error = 499, exc
        if not accounted:
            cut_short(accounting, accumulator, gen, req, ctx, plan, status)
        raise
    finally:
        await aclose(upstream)
        ttft = accumulator.first_token_s
        accounting.finish(span, ctx, req.model, model.name, status,
                          None if ttft is None else ttft + (accumulator.started - ctx.received),
                          accumulator.usage, error)


def cut_short(accounting: Accounting, accumulator: StreamAccumulator, gen: GenerationRequest,
              req: protocol.OpenAIRequest, ctx: RequestContext, plan: Plan, status: int) -> None:
    """A stream that ended before its end (the client went away, the upstream failed): what
    was generated is still accounted — recorded with ``status`` and priced, its usage counted
    here when the model never reported it."""
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
        accounting.completed(ctx, req, gen, [*plan.prior, result], plan.decision, status,
                             estimated)
    except Exception:  # accounting must never turn a cut stream into another error
        log.exception("request %s: the cut stream was not accounted", gen.request_id)
