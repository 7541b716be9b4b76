"""The spend seam and the token rule of :mod:`gateway.keys.gate`: what a completed request
charges to its key's budget, and the tokens it counts."""

from __future__ import annotations

from gateway import protocol
from gateway.kernel.generation import ChoiceResult, GenerationResult, Usage
from gateway.kernel.modeltuple import ModelTuple
from gateway.keys.gate import UsageListener, estimate_tokens, used_tokens
from gateway.keys.limiter import Ticket
from gateway.keys.settings import KeyPolicy
from gateway.listener import CompletedRequest, RequestContext
from gateway.models.cost import CallCost, TokenCounts

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


def test_every_call_of_a_request_counts_its_tokens() -> None:
    assert used_tokens(completed((10, 5), (10, 20))) == 45  # a cascade: small, then large


def test_the_budgets_charge_every_priced_call() -> None:
    done = completed((400_000, 100_000), (400_000, 100_000))
    tokens = TokenCounts(400_000, 100_000)
    done.costs = [CallCost("small", "tokens", 0.25, tokens, 1.0, {}),
                  CallCost("large", "tokens", 1.5, tokens, 2.0, {})]
    listener = UsageListener()
    ticket = listener.pending["r1"] = Ticket("team-a", "r1", KeyPolicy(), 0)
    listener.completed(done)
    assert ticket.spend_usd == 1.75  # a cascade: the small call is charged too
    assert ticket.used_tokens == 1_000_000
    done.costs = []  # unpriced models cost nothing
    listener.completed(done)
    assert ticket.spend_usd == 0.0


def test_the_admission_estimate_is_a_quarter_of_the_body() -> None:
    assert [estimate_tokens(b"x" * n) for n in (0, 1, 4, 5, 400)] == [0, 1, 1, 2, 100]
