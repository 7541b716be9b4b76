"""Routing modes as strategies chosen by name: a new mode is registered and served with no change
outside its own code, unknown names are refused naming the known ones, and the built-in modes
decide as they always have."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pydantic
import pytest

from gateway import protocol
from gateway.http.state import GatewayState
from gateway.kernel.errors import ConfigError
from gateway.kernel.generation import (
    ChoiceResult,
    GenerationRequest,
    GenerationResult,
    SamplingParams,
    TokenLogprob,
    Usage,
)
from gateway.kernel.modeltuple import ModelTuple
from gateway.listener import CompletedRequest, RequestContext, RequestListener
from gateway.settings import Settings
from router.decision import Tier
from router.loading import build_router
from router.policy import Generate, Route, Router
from router.settings import RouteSettings
from router.strategies import (
    ROUTING_MODES,
    Routed,
    RoutingStrategy,
    decision_for,
    get_strategy,
    register,
    unregister,
)
from router.thresholds import ThresholdStore
from tests.conftest import ServerProcess, upstream_model
from tests.router.test_routing import manifest_sha256
from verifiers.data import VerifierInput

REF_AUTO = Path(__file__).resolve().parents[2] / "gateway" / "reference" / "verifiers" / "ref-auto"


class AlwaysLarge(RoutingStrategy):
    """A toy mode: the large tier answers every request, and says it escalated."""

    name = "always-large"
    verifier_kind = None

    async def route(self, router: Router, route: Route, request: GenerationRequest,
                    generate: Generate) -> Routed:
        return Routed.calling(decision_for(route, "large", escalated=True), route.large)


@pytest.fixture
def always_large() -> Iterator[type[RoutingStrategy]]:
    register(AlwaysLarge)
    yield AlwaysLarge
    unregister(AlwaysLarge.name)


class ScriptedVerifier:
    """Scores what it is told to and keeps what it saw (a stand-in for a trained verifier)."""

    id, sha256, blocking = "vrf-scripted", "cd" * 32, False

    def __init__(self, kind: str, score: float) -> None:
        self.kind = kind
        self.value = score
        self.seen: list[VerifierInput] = []

    def score(self, item: VerifierInput) -> float:
        self.seen.append(item)
        return self.value


class Completions(RequestListener):
    """Keeps every completed request."""

    def __init__(self) -> None:
        self.done: list[CompletedRequest] = []

    def completed(self, done: CompletedRequest) -> None:
        self.done.append(done)


class Models:
    """A fake ``generate``: answers with the model's name, logprobs when asked; notes the calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, GenerationRequest]] = []

    async def __call__(self, model: str, request: GenerationRequest) -> GenerationResult:
        self.calls.append((model, request))
        logprobs = None if request.sampling.logprobs is None else [TokenLogprob(model, -0.25)]
        return GenerationResult(model=ModelTuple(name=model, engine="test"), usage=Usage(),
                                choices=[ChoiceResult(0, model, "stop", logprobs=logprobs)])


def completion(logprobs: int | None = None) -> GenerationRequest:
    return GenerationRequest(request_id="r", kind="completion", prompt="rev(1+2)=",
                             sampling=SamplingParams(temperature=0.0, logprobs=logprobs))


async def routed(mode: str, score: float = 0.0, tier: Tier = "small",
                 logprobs: int | None = None) -> tuple[Routed, Models, ScriptedVerifier]:
    """One request routed by ``mode`` on a route ``auto`` (threshold 0.5) over fake models."""
    kind = ROUTING_MODES[mode].verifier_kind
    verifier = ScriptedVerifier(kind or "prompt", score)
    route = Route("auto", mode, "small", "large", tier, None if kind is None else verifier)
    router = Router({"auto": route}, ThresholdStore({"auto": 0.5}))
    models = Models()
    result = await get_strategy(mode).route(router, route, completion(logprobs), models)
    return result, models, verifier


# -- the registry, through settings ---------------------------------------------------------------


def test_the_built_in_modes_are_registered_with_their_verifier_kinds() -> None:
    assert {name: cls.verifier_kind for name, cls in ROUTING_MODES.items()} == {
        "fixed": None, "prompt": "prompt", "cascade": "answer"}


def test_an_unknown_mode_is_refused_naming_the_known_ones() -> None:
    with pytest.raises(pydantic.ValidationError,
                       match="unknown routing mode 'smart'; known modes: fixed, prompt, cascade"):
        RouteSettings(mode="smart", small="small", large="large")
    with pytest.raises(ValueError, match="unknown routing mode 'smart'; known: fixed, prompt"):
        get_strategy("smart")


def test_a_mode_that_scores_needs_a_verifier_of_its_kind() -> None:
    with pytest.raises(pydantic.ValidationError, match="a prompt route needs a 'verifier'"):
        RouteSettings(mode="prompt", small="small", large="large")
    wrong = RouteSettings(mode="prompt", small="small", large="large", verifier=REF_AUTO,
                          verifier_sha256=manifest_sha256(REF_AUTO))
    with pytest.raises(ConfigError, match="a prompt route needs a prompt verifier"):
        build_router({"auto": wrong}, None)
    fixed = RouteSettings(mode="fixed", small="small", large="large", verifier=REF_AUTO)
    with pytest.raises(ConfigError, match="a fixed route uses no verifier"):
        build_router({"auto": fixed}, None)


def test_a_name_is_registered_once(always_large: type[RoutingStrategy]) -> None:
    assert ROUTING_MODES["always-large"] is always_large
    with pytest.raises(ValueError, match="already registered"):
        register(always_large)


# -- a new mode, served ---------------------------------------------------------------------------


@pytest.fixture
async def state(upstream: ServerProcess,
                always_large: type[RoutingStrategy]) -> AsyncIterator[GatewayState]:
    settings = Settings(models={"small": upstream_model(upstream, "echo"),
                                "large": upstream_model(upstream, "echo")},
                        routes={"big": {"mode": always_large.name, "small": "small",
                                        "large": "large"}},
                        records={"sink": "none"})
    state = GatewayState.build(settings)
    await state.registry.start()
    yield state
    await state.registry.aclose()


def chat(model: str, stream: bool = False) -> protocol.ChatCompletionRequest:
    return protocol.ChatCompletionRequest.model_validate(
        {"model": model, "stream": stream, "messages": [{"role": "user", "content": "hi"}]})


async def test_a_registered_mode_is_served_by_its_route(state: GatewayState) -> None:
    listener = Completions()
    state.serving.add_listener(listener)
    for stream in (False, True):
        served = await state.serving.create(chat("big", stream), RequestContext(request_id="r"))
        if served.stream is not None:
            assert b"data: [DONE]" in b"".join([piece async for piece in served.stream])
        else:
            assert served.body is not None and served.body["model"] == "large"
        assert served.headers["x-tiergate-route"] == "big"
        assert served.headers["x-tiergate-escalated"] == "true"
    for done in listener.done:
        assert done.decision is not None
        assert (done.decision.mode, done.decision.model, done.decision.candidates) == (
            "always-large", "large", ["large"])
        assert [r.model.name for r in done.results] == ["large"]


async def test_serving_answers_a_cascade_from_its_strategy(state: GatewayState) -> None:
    listener = Completions()
    state.serving.add_listener(listener)
    for score in (0.1, 0.9):
        verifier = ScriptedVerifier("answer", score)
        route = Route("cascade", "cascade", "small", "large", verifier=verifier)
        state.serving.router = Router({"cascade": route}, ThresholdStore({"cascade": 0.5}))
        served = await state.serving.create(chat("cascade"), RequestContext(request_id="c"))
        assert served.body is not None
        assert served.body["choices"][0].get("logprobs") is None  # asked for on its own account
        assert verifier.seen[0].answer is not None
        assert verifier.seen[0].answer.token_logprobs is not None
    accepted, escalated = (done for done in listener.done)
    assert accepted.decision is not None and escalated.decision is not None
    assert (accepted.decision.candidates, [r.model.name for r in accepted.results]) == (
        ["small"], ["small"])
    assert (escalated.decision.candidates, [r.model.name for r in escalated.results]) == (
        ["small", "large"], ["small", "large"])


# -- the built-in modes keep their decisions ------------------------------------------------------


@pytest.mark.parametrize("tier", ["small", "large"])
async def test_fixed_never_scores_nor_escalates(tier: Tier) -> None:
    result, models, verifier = await routed("fixed", tier=tier)
    decision = result.decision
    assert (result.model, result.ready, result.prior) == (tier, None, [])
    assert (decision.mode, decision.tier, decision.model, decision.escalated) == (
        "fixed", tier, tier, False)
    assert (decision.score, decision.threshold, decision.verifier_id) == (None, None, None)
    assert decision.candidates == [tier] and models.calls == [] and verifier.seen == []


@pytest.mark.parametrize(("score", "tier"), [(0.2, "small"), (0.5, "large"), (0.9, "large")])
async def test_prompt_scores_the_request_before_any_generation(score: float, tier: Tier) -> None:
    result, models, verifier = await routed("prompt", score)
    decision = result.decision
    assert models.calls == [] and verifier.seen[0].answer is None
    assert (result.model, result.ready, result.prior) == (tier, None, [])
    assert (decision.tier, decision.model, decision.escalated) == (tier, tier, tier == "large")
    assert (decision.score, decision.threshold) == (score, 0.5)
    assert (decision.verifier_id, decision.verifier_sha256) == ("vrf-scripted", "cd" * 32)
    assert decision.feature_digest is not None and decision.candidates == [tier]


async def test_a_cascade_that_accepts_is_answered_by_the_small_call() -> None:
    result, models, verifier = await routed("cascade", 0.1)
    decision = result.decision
    assert [model for model, _ in models.calls] == ["small"]
    assert models.calls[0][1].sampling.logprobs == 0  # forced on: the verifier reads them
    assert result.ready is not None and result.ready.model.name == "small"
    assert result.ready.choices[0].logprobs  # kept, for the records
    assert (result.model, result.prior) == (None, [])
    assert verifier.seen[0].answer is not None and verifier.seen[0].answer.text == "small"
    assert (decision.tier, decision.model, decision.escalated, decision.candidates) == (
        "small", "small", False, ["small"])


async def test_a_cascade_that_escalates_calls_the_large_model_next() -> None:
    result, models, _ = await routed("cascade", 0.9, logprobs=3)
    decision = result.decision
    assert models.calls[0][1].sampling.logprobs == 3  # the client's own request, unchanged
    assert result.model == "large" and result.ready is None
    assert [r.model.name for r in result.prior] == ["small"]
    assert (decision.tier, decision.model, decision.escalated, decision.candidates) == (
        "large", "large", True, ["small", "large"])


async def test_a_decision_says_what_it_was(always_large: type[RoutingStrategy]) -> None:
    result, _, _ = await routed("always-large")
    fields: dict[str, Any] = result.decision.to_dict()
    assert (fields["mode"], fields["tier"], fields["escalated"]) == ("always-large", "large", True)
