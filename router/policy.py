"""The routing policy: for a route such as ``auto``, which tier answers a request.

Each route names a **mode**, a strategy chosen by name from :data:`router.strategies.ROUTING_MODES`
(``fixed``, ``prompt``, ``cascade``; see there). This module holds what every strategy shares: the
:class:`Route`, the :class:`Router` (routes and their live thresholds), the :class:`Verifier` a
route scores with, and what a verifier sees of a request (:func:`verifier_input`).

The policy works on plain request/result objects (no HTTP): the caller passes a function that
generates with a named model. Every decision says which verifier (id + sha256) and threshold it
used, the score, and a digest of exactly what the verifier saw.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import orjson

from gateway.kernel.generation import GenerationRequest, GenerationResult
from router.decision import Mode, Tier
from router.thresholds import ThresholdStore

if TYPE_CHECKING:
    from verifiers.data import Answer, VerifierInput

Generate = Callable[[str, GenerationRequest], Awaitable[GenerationResult]]
"""Generates with a named model (the gateway's dispatcher)."""


class Verifier(Protocol):
    """What routing uses of a verifier (``verifiers.scoring.Verifier``, or a test's fake)."""

    @property
    def id(self) -> str: ...

    @property
    def sha256(self) -> str: ...

    @property
    def kind(self) -> str:
        """``prompt`` (reads the request) or ``answer`` (reads the small model's answer too)."""
        ...

    @property
    def blocking(self) -> bool:
        """Scoring runs a neural encoder: routing scores it off the event loop."""
        ...

    def score(self, item: VerifierInput) -> float:
        """The routing score of one request: escalate when it is >= the route's threshold."""
        ...


@dataclass(slots=True)
class Route:
    """A routed model name: its mode (a name in ``ROUTING_MODES``), its two tiers, its verifier."""

    name: str
    mode: Mode
    small: str
    large: str
    tier: Tier = "small"
    """For ``fixed`` routes: the tier that always answers."""
    verifier: Verifier | None = None


def request_body(request: GenerationRequest) -> dict[str, Any]:
    """The OpenAI-shaped part of a request a verifier reads: ``messages`` or ``prompt``."""
    if request.kind == "chat":
        return {"messages": request.messages}
    return {"prompt": request.prompt if isinstance(request.prompt, str) else ""}


def answer_of(result: GenerationResult) -> Answer:
    """A model's first choice as a verifier reads it: text, token logprobs, top logprobs."""
    from verifiers.data import Answer

    choice = result.choices[0]
    logprobs = tuple(lp.logprob for lp in choice.logprobs) if choice.logprobs else None
    tops = (tuple(tuple(t.logprob for t in lp.top) for lp in choice.logprobs)
            if choice.logprobs else None)
    return Answer(choice.text, logprobs, tops)


def verifier_input(request: GenerationRequest, answer: GenerationResult | None) -> VerifierInput:
    """What a verifier sees: the prompt text, and the small model's answer with its logprobs.

    ``tiergate collect`` builds its training rows with the same two functions, so a verifier is
    trained on exactly what it sees when serving."""
    from verifiers.data import VerifierInput

    small_answer = None if answer is None else answer_of(answer)
    return VerifierInput.from_request(request_body(request), small_answer)


def feature_digest(item: VerifierInput) -> str:
    payload = {"prompt": item.prompt, "slice": item.slice,
               "answer": None if item.answer is None else {
                   "text": item.answer.text, "token_logprobs": item.answer.token_logprobs}}
    return hashlib.sha256(orjson.dumps(payload, option=orjson.OPT_SORT_KEYS)).hexdigest()


class Router:
    """The routes by name, and the threshold store that holds their live thresholds."""

    def __init__(self, routes: dict[str, Route], thresholds: ThresholdStore) -> None:
        self.routes = routes
        self.thresholds = thresholds
