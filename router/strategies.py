"""Routing modes: how a route chooses the tier that answers, one strategy per mode, by name.

A route's ``mode`` names a :class:`RoutingStrategy` in :data:`ROUTING_MODES`. For each request to
the route the gateway calls the strategy's :meth:`~RoutingStrategy.route` and gets a
:class:`Routed`: the decision, and the model to call next or an answer already accepted. Built in:

``fixed``
    Always one tier (the route's ``tier``): a baseline, or a kill switch. No verifier, no score.
``prompt``
    A **prompt** verifier scores the request before any generation; escalate to the large model
    when ``score >= threshold``. One model call.
``cascade``
    The small model answers first (with logprobs); an **answer** verifier scores the request with
    that answer: accept it, or escalate and the large model answers. A cascade that accepts costs
    one small call; one that escalates costs both.

A new mode is a subclass with a ``name`` and a ``verifier_kind``, decorated with
:func:`register`: settings validate the name and the verifier, loading checks the verifier's
kind, and the gateway serves it, with no change outside ``router/``.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, ClassVar, Literal, TypeVar

from gateway.kernel.generation import GenerationRequest, GenerationResult
from router.decision import Decision, Tier
from router.policy import Generate, Route, Router, feature_digest, verifier_input

VerifierKind = Literal["prompt", "answer"]
"""``prompt``: the verifier reads the request; ``answer``: the small model's answer too."""


@dataclass(slots=True)
class Routed:
    """How a routed request will be answered: by ``model`` (called next), or by ``ready`` (an
    answer already produced and accepted), after the answers in ``prior`` (produced, not sent:
    a cascade's rejected small answer), in call order."""

    decision: Decision
    model: str | None = None
    ready: GenerationResult | None = None
    prior: list[GenerationResult] = field(default_factory=list)

    @classmethod
    def calling(cls, decision: Decision, model: str,
                prior: Iterable[GenerationResult] = ()) -> Routed:
        """``model`` answers next: noted as the decision's last candidate."""
        decision.candidates.append(model)
        return cls(decision, model, None, list(prior))


class RoutingStrategy(ABC):
    """How a route chooses the tier that answers a request: one subclass per mode."""

    name: ClassVar[str]
    """The mode's name: ``routes.NAME.mode`` in settings, ``mode`` in decisions and records."""
    verifier_kind: ClassVar[VerifierKind | None]
    """The kind of verifier the mode's routes need; ``None``: they use none."""

    @abstractmethod
    async def route(self, router: Router, route: Route, request: GenerationRequest,
                    generate: Generate) -> Routed:
        """Decide one request to ``route`` (generating with ``generate`` where the mode needs
        an answer to decide)."""

    def describe(self, route: Route) -> dict[str, Any]:
        """What the route's ``/v1/models`` card says of the mode beyond its name."""
        return {}


def decision_for(route: Route, tier: Tier, *, escalated: bool, **fields: Any) -> Decision:
    """The decision that ``tier`` of ``route`` answers."""
    return Decision(route=route.name, mode=route.mode, tier=tier,
                    model=route.small if tier == "small" else route.large, escalated=escalated,
                    **fields)


def scored(router: Router, route: Route, request: GenerationRequest,
           answer: GenerationResult | None) -> Decision:
    """The route's verifier scores the request (and ``answer``, for an answer verifier); the
    large tier answers when the score reaches the route's live threshold."""
    if route.verifier is None:
        raise ValueError(f"route {route.name}: a {route.mode} route needs a verifier")
    item = verifier_input(request, answer)
    score = float(route.verifier.score(item))
    threshold = router.thresholds.get(route.name)
    tier: Tier = "large" if score >= threshold else "small"
    return decision_for(route, tier, escalated=tier == "large", verifier_id=route.verifier.id,
                        verifier_sha256=route.verifier.sha256,
                        feature_digest=feature_digest(item), score=score, threshold=threshold)


async def score(router: Router, route: Route, request: GenerationRequest,
                answer: GenerationResult | None) -> Decision:
    """:func:`scored` inline (a fraction of a millisecond), or in a worker thread for a verifier
    that runs a neural encoder (embeddings: tens of milliseconds on CPU)."""
    if route.verifier is not None and route.verifier.blocking:
        return await asyncio.to_thread(scored, router, route, request, answer)
    return scored(router, route, request, answer)


_MODES: dict[str, type[RoutingStrategy]] = {}

ROUTING_MODES: Mapping[str, type[RoutingStrategy]] = MappingProxyType(_MODES)
"""The routing modes by name, in registration order: a read-only view of :func:`register`."""

S = TypeVar("S", bound=type[RoutingStrategy])


def register(strategy: S) -> S:
    """Register a mode under its ``name`` (a class decorator); each name once."""
    if strategy.name in _MODES:
        raise ValueError(f"routing mode {strategy.name!r} is already registered")
    _MODES[strategy.name] = strategy
    return strategy


def unregister(name: str) -> None:
    """Remove a registered mode (a test's, a plugin's)."""
    del _MODES[name]


def get_strategy(name: str) -> RoutingStrategy:
    """The strategy of mode ``name``; a ``ValueError`` naming the known modes if none."""
    cls = ROUTING_MODES.get(name)
    if cls is None:
        raise ValueError(f"unknown routing mode {name!r}; known: {', '.join(ROUTING_MODES)}")
    return cls()


@register
class FixedStrategy(RoutingStrategy):
    """Always the route's ``tier``: a baseline, or a kill switch. Never scores."""

    name = "fixed"
    verifier_kind = None

    async def route(self, router: Router, route: Route, request: GenerationRequest,
                    generate: Generate) -> Routed:
        decision = decision_for(route, route.tier, escalated=False)
        return Routed.calling(decision, decision.model)

    def describe(self, route: Route) -> dict[str, Any]:
        return {"tier": route.tier}


@register
class PromptStrategy(RoutingStrategy):
    """A prompt verifier scores the request before any generation; one model answers."""

    name = "prompt"
    verifier_kind = "prompt"

    async def route(self, router: Router, route: Route, request: GenerationRequest,
                    generate: Generate) -> Routed:
        decision = await score(router, route, request, None)
        return Routed.calling(decision, decision.model)


@register
class CascadeStrategy(RoutingStrategy):
    """The small model answers (logprobs on); an answer verifier accepts it or escalates.

    The small answer keeps the logprobs the verifier read even when the client did not ask for
    them (the gateway strips them from its response; records keep them). An escalated request's
    large answer is the caller's to produce (streamed or not)."""

    name = "cascade"
    verifier_kind = "answer"

    async def route(self, router: Router, route: Route, request: GenerationRequest,
                    generate: Generate) -> Routed:
        small_request = request
        if request.sampling.logprobs is None:  # the verifier reads logprobs; the client won't
            small_request = replace(request, sampling=replace(request.sampling, logprobs=0))
        small = await generate(route.small, small_request)
        decision = await score(router, route, request, small)
        decision.candidates.append(route.small)
        if not decision.escalated:
            return Routed(decision, ready=small)
        return Routed.calling(decision, route.large, prior=[small])
