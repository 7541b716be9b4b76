"""The one interface between the request path and what listens to it (records, shadow mirroring).

Serving tells each :class:`RequestListener` four things about a request, and nothing else: may it
be served (:meth:`~RequestListener.admit`), which headers the answer carries for the listener
(:meth:`~RequestListener.headers`), that its model call is under way
(:meth:`~RequestListener.started`, the time to prepare work that does not need the answer), and
that it is complete (:meth:`~RequestListener.completed`, a :class:`CompletedRequest`). Listeners
must not block: they queue and return. A listener's failure is logged, never the request's.

The types here are plain objects: records and canaries read them without knowing HTTP or the
serving object.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from gateway.kernel.generation import GenerationRequest, GenerationResult
from gateway.models.cost import CallCost
from gateway.protocol import OpenAIRequest
from router.decision import Decision


@dataclass(slots=True)
class RequestContext:
    """One request as the front door saw it: its id, caller and trace context."""

    request_id: str
    caller: str | None = None
    trace_headers: dict[str, str] = field(default_factory=dict)
    """The client's ``traceparent`` / ``tracestate``, continued by the request's span."""
    operation: str = "completion"
    received: float = field(default_factory=time.perf_counter)
    prepared: dict[str, Any] = field(default_factory=dict)
    """What listeners prepared for this request in :meth:`RequestListener.started`, by the
    listener's ``name``."""


@dataclass(slots=True)
class CompletedRequest:
    """Everything about one answered request, handed to listeners after the response is
    complete (before a stream's ``[DONE]``)."""

    ctx: RequestContext
    route: str
    """The ``model`` the client asked for."""
    client_request: OpenAIRequest
    """The request as the client sent it (validated; ``model_dump`` gives the JSON)."""
    request: GenerationRequest
    """The request as applied: every sampling parameter, the effective seed."""
    results: list[GenerationResult]
    """Every model call's result, in call order (a cascade: the small answer, then the large)."""
    decision: Decision | None
    stream: bool
    status: int
    """200, or the status of a stream that ended early after output was generated (``499``: the
    client went away; its last result then holds what was generated, its cost ``estimated``
    where the model never reported the usage)."""
    costs: list[CallCost] = field(default_factory=list)
    """What each call in :attr:`results` cost, in the same order (tokens, seconds, USD; see
    :mod:`gateway.models.cost`). Empty only where a listener is driven without serving."""
    finished_at: float = field(default_factory=time.time)

    @property
    def cost_usd(self) -> float:
        """What the request cost in all, every call included (a cascade's small call too): the
        figure a budget or a bill reads."""
        return sum(cost.usd for cost in self.costs)


class RequestListener:
    """A listener of the request path. Every hook is optional (the defaults do nothing); the
    serving object calls only the hooks a listener's class overrides."""

    name: str = "listener"
    """The key of what this listener prepares in :attr:`RequestContext.prepared`."""

    def admit(self) -> None:
        """Before a request is served: raise a ``TiergateError`` to refuse it (backpressure)."""

    def headers(self, request: GenerationRequest) -> dict[str, str]:
        """Response headers this listener adds to every answer (e.g. the record id)."""
        return {}

    def started(self, ctx: RequestContext, client_request: OpenAIRequest,
                request: GenerationRequest) -> None:
        """The model call is under way (run once it waits for the model): prepare what does
        not need the answer."""

    def completed(self, done: CompletedRequest) -> None:
        """The answer is complete."""


class Listeners:
    """The listeners of a serving object, with, per hook, those that implement it (the default
    no-ops are never called on the request path)."""

    def __init__(self, listeners: Iterable[RequestListener] = ()) -> None:
        self.all: list[RequestListener] = []
        self.admitting: list[RequestListener] = []
        self.heading: list[RequestListener] = []
        self.starting: list[RequestListener] = []
        self.completing: list[RequestListener] = []
        for listener in listeners:
            self.add(listener)

    def add(self, listener: RequestListener) -> None:
        self.all.append(listener)
        for hook, users in (("admit", self.admitting), ("headers", self.heading),
                            ("started", self.starting), ("completed", self.completing)):
            if getattr(type(listener), hook) is not getattr(RequestListener, hook):
                users.append(listener)
