"""The routing policy's scoring: inline for cheap verifiers, off the event loop for encoders."""

from __future__ import annotations

import threading
from typing import Any

from gateway.kernel.generation import GenerationRequest, GenerationResult, SamplingParams
from router.policy import Route, Router
from router.strategies import get_strategy
from router.thresholds import ThresholdStore


class RecordingVerifier:
    """Scores 0.9 and notes the thread it was called on (a stand-in for a trained verifier)."""

    id, sha256, kind = "vrf-test", "ab" * 32, "prompt"

    def __init__(self, blocking: bool) -> None:
        self.blocking = blocking
        self.threads: list[int] = []

    def score(self, item: Any) -> float:
        self.threads.append(threading.get_ident())
        return 0.9


async def no_generation(model: str, request: GenerationRequest) -> GenerationResult:
    raise AssertionError("a prompt route decides before any generation")


async def test_encoder_verifiers_score_off_the_event_loop() -> None:
    request = GenerationRequest(request_id="r", kind="completion",
                                sampling=SamplingParams(temperature=0.0), prompt="rev(1+2)=")
    loop_thread = threading.get_ident()
    for blocking in (False, True):
        verifier = RecordingVerifier(blocking)
        route = Route("auto", "prompt", "small", "large", verifier=verifier)
        router = Router({"auto": route}, ThresholdStore({"auto": 0.5}))
        routed = await get_strategy("prompt").route(router, route, request, no_generation)
        decision = routed.decision
        assert decision.escalated and decision.score == 0.9 and decision.threshold == 0.5
        assert (verifier.threads[0] != loop_thread) is blocking
