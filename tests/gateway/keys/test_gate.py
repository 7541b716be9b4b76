"""The spend seam and the token rule of :mod:`gateway.keys.gate`: what a completed request
charges to its key's budget, and the tokens it counts."""

from __future__ import annotations

from dataclasses import dataclass

from gateway import protocol
from gateway.kernel.generation import ChoiceResult, GenerationResult, Usage
from gateway.kernel.modeltuple import ModelTuple
from gateway.keys.gate import estimate_tokens, request_spend, used_tokens
from gateway.listener import CompletedRequest, RequestContext

MODEL = ModelTuple(name="echo", engine="http")


def completed(*usages: tuple[int, int]) -> CompletedRequest:
    client = protocol.ChatCompletionRequest.model_validate(
        {"model": "auto", "messages": [{"role": "user", "content": "hi"}]})
    choice = ChoiceResult(index=0, text="ok", finish_reason="stop")
    results = [GenerationResult(model=MODEL, choices=[choice],
                                usage=Usage(prompt_tokens=p, completion_tokens=c))
               for p, c in usages]
    return CompletedRequest(RequestContext(request_id="r1", caller="team-a"), "auto", client,
                            client.to_generation_request("r1"), results, None, stream=False,
                            status=200)


@dataclass(slots=True)
class Priced(CompletedRequest):
    """A completed request as the cost model prices it (``cost_usd``)."""

    cost_usd: float | None = None


def test_every_call_of_a_request_counts_its_tokens() -> None:
    assert used_tokens(completed((10, 5), (10, 20))) == 45  # a cascade: small, then large


def test_spend_is_the_request_price_when_there_is_one() -> None:
    spend = request_spend(usd_per_million_tokens=2.0)
    unpriced = completed((400_000, 100_000))
    assert spend(unpriced) == 1.0
    done = completed((400_000, 100_000))
    priced = Priced(done.ctx, done.route, done.client_request, done.request, done.results,
                    None, stream=False, status=200, cost_usd=0.25)
    assert spend(priced) == 0.25
    priced.cost_usd = None  # not priced: the flat rate
    assert spend(priced) == 1.0


def test_the_admission_estimate_is_a_quarter_of_the_body() -> None:
    assert [estimate_tokens(b"x" * n) for n in (0, 1, 4, 5, 400)] == [0, 1, 1, 2, 100]
