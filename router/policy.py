"""The routing policy: for a route such as ``auto``, which tier answers a request.

Three modes, chosen per route:

- ``fixed``: always one tier (``tier = "small"`` or ``"large"``) — a baseline, or a kill switch;
- ``prompt``: a **prompt** verifier scores the request before any generation; escalate to the
  large model when ``score >= threshold``; one model call;
- ``cascade``: the small model answers first (with logprobs), an **answer** verifier scores the
  request with that answer; accept it, or escalate: the large model answers. A cascade that
  accepts costs one small call; one that escalates costs both.

The policy works on plain request/result objects (no HTTP): the caller passes a function that
generates with a named model. Every decision says which verifier (id + sha256) and threshold it
used, the score, and a digest of exactly what the verifier saw.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import orjson

from gateway.backends.base import GenerationRequest, GenerationResult
from router.decision import Decision, Mode, Tier
from router.thresholds import ThresholdStore

if TYPE_CHECKING:
    from verifiers.data import Answer, VerifierInput
    from verifiers.scoring import Verifier

Generate = Callable[[str, GenerationRequest], Awaitable[GenerationResult]]


@dataclass(slots=True)
class Route:
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
    def __init__(self, routes: dict[str, Route], thresholds: ThresholdStore) -> None:
        self.routes = routes
        self.thresholds = thresholds

    def _decision(self, route: Route, tier: Tier, **fields: Any) -> Decision:
        return Decision(route=route.name, mode=route.mode, tier=tier,
                        model=route.small if tier == "small" else route.large,
                        escalated=tier == "large" and route.mode != "fixed", **fields)

    def _scored(self, route: Route, request: GenerationRequest,
                answer: GenerationResult | None) -> Decision:
        assert route.verifier is not None
        item = verifier_input(request, answer)
        score = float(route.verifier.score(item))
        threshold = self.thresholds.get(route.name)
        tier: Tier = "large" if score >= threshold else "small"
        return self._decision(route, tier, verifier_id=route.verifier.id,
                              verifier_sha256=route.verifier.sha256,
                              feature_digest=feature_digest(item), score=score,
                              threshold=threshold)

    async def _score(self, route: Route, request: GenerationRequest,
                     answer: GenerationResult | None) -> Decision:
        """Score inline (a fraction of a millisecond), or in a worker thread for a verifier
        that runs a neural encoder (embeddings: tens of milliseconds on CPU)."""
        assert route.verifier is not None
        if route.verifier.blocking:
            return await asyncio.to_thread(self._scored, route, request, answer)
        return self._scored(route, request, answer)

    def decide_before(self, route: Route, request: GenerationRequest) -> Decision:
        """``fixed`` and ``prompt`` routes: the tier, before any model is called (scored on
        the calling thread; the server uses :meth:`decide`)."""
        if route.mode == "fixed":
            return self._decision(route, route.tier)
        if route.mode == "prompt":
            return self._scored(route, request, None)
        raise ValueError(f"route {route.name} is a cascade: use cascade()")

    async def decide(self, route: Route, request: GenerationRequest) -> Decision:
        """:meth:`decide_before` that never blocks the event loop."""
        if route.mode == "prompt":
            return await self._score(route, request, None)
        return self.decide_before(route, request)

    async def cascade(self, route: Route, request: GenerationRequest,
                      generate: Generate) -> tuple[Decision, GenerationResult]:
        """The small model answers (logprobs on); the answer verifier accepts it or escalates.
        Returns the decision and the small result, logprobs included even if the client did
        not ask for them (the caller strips them from its response; records keep them). The
        caller produces the large answer when the decision escalates, streamed or not."""
        small_request = request
        if request.sampling.logprobs is None:  # the verifier reads logprobs; the client won't
            small_request = replace(request, sampling=replace(request.sampling, logprobs=0))
        small = await generate(route.small, small_request)
        decision = await self._score(route, request, small)
        decision.candidates.append(route.small)
        return decision, small  # with the logprobs the verifier read (records keep them)
