"""The cost models: token prices (cached tokens included), serving time, unpriced models, and the
usage of a stream that ended before its model reported it."""

from __future__ import annotations

from dataclasses import replace

import pytest
from pydantic import TypeAdapter, ValidationError

from gateway.backends.settings import CostSettings, HTTPModelSettings
from gateway.kernel.generation import (
    ChoiceResult,
    GenerationChunk,
    GenerationRequest,
    GenerationResult,
    SamplingParams,
    StreamAccumulator,
    Timing,
    Usage,
)
from gateway.kernel.modeltuple import ModelTuple
from gateway.models.cost import (
    COST_MODELS,
    PriceBook,
    TokenCounts,
    cost_model,
    prompt_tokens_estimate,
    usage_so_far,
)
from gateway.serving import cost_header

COSTS: TypeAdapter[CostSettings] = TypeAdapter(CostSettings)


def tokens_price(**prices: float) -> CostSettings:
    return COSTS.validate_python({"kind": "tokens", **prices})


def test_token_prices_are_per_million_and_cached_tokens_have_their_own() -> None:
    model = cost_model(tokens_price(input_usd_per_mtok=3.0, output_usd_per_mtok=15.0,
                                    cached_input_usd_per_mtok=0.3))
    # 1000 prompt tokens, 400 of them cached; 200 completion tokens
    usd = model.usd(TokenCounts(prompt=1000, completion=200, cached=400), seconds=99.0)
    assert usd == pytest.approx((600 * 3.0 + 400 * 0.3 + 200 * 15.0) / 1e6)
    assert model.rates() == {"input_usd_per_mtok": 3.0, "cached_input_usd_per_mtok": 0.3,
                             "output_usd_per_mtok": 15.0}


def test_cached_tokens_cost_the_input_price_unless_priced() -> None:
    model = cost_model(tokens_price(input_usd_per_mtok=2.0, output_usd_per_mtok=8.0))
    assert model.usd(TokenCounts(1_000_000, 0, cached=500_000), 0.0) == pytest.approx(2.0)
    assert model.usd(TokenCounts(0, 1_000_000), 0.0) == pytest.approx(8.0)


def test_serving_time_is_seconds_at_the_hourly_price_shared_by_concurrency() -> None:
    model = cost_model(COSTS.validate_python({"kind": "serving-time", "usd_per_hour": 2.5,
                                              "concurrency": 4}))
    assert model.kind == "serving-time"
    # 36 s of a $2.50/h GPU serving 4 requests at once: 36 / 3600 * 2.5 / 4
    assert model.usd(TokenCounts(10_000, 10_000), 36.0) == pytest.approx(0.00625)
    assert model.usd(TokenCounts(), 0.0) == 0.0


def test_cost_sections_are_validated_by_kind() -> None:
    assert set(COST_MODELS) == {"tokens", "serving-time"}
    for bad in ({"kind": "tokens", "input_usd_per_mtok": -1, "output_usd_per_mtok": 1},
                {"kind": "tokens", "input_usd_per_mtok": 1},
                {"kind": "serving-time", "usd_per_hour": 1, "concurrency": 0},
                {"kind": "per-request", "usd": 1}):
        with pytest.raises(ValidationError):
            COSTS.validate_python(bad)
    model = HTTPModelSettings.model_validate({
        "base_url": "http://up:8000/v1",
        "cost": {"kind": "serving-time", "usd_per_hour": 4.0}})
    assert model.cost is not None and model.cost.kind == "serving-time"


def result(name: str, usage: Usage, seconds: float) -> GenerationResult:
    return GenerationResult(model=ModelTuple(name=name, engine="http"),
                            choices=[ChoiceResult(index=0, text="x", finish_reason="stop")],
                            usage=usage, timing=Timing(total_s=seconds))


def test_the_price_book_prices_a_call_by_the_model_that_made_it() -> None:
    settings = {
        "hosted": HTTPModelSettings.model_validate({
            "base_url": "http://up/v1",
            "cost": {"kind": "tokens", "input_usd_per_mtok": 1, "output_usd_per_mtok": 4}}),
        "free": HTTPModelSettings.model_validate({"base_url": "http://up/v1"})}
    book = PriceBook(settings)
    usage = Usage(100, 50, extra={"prompt_tokens_details": {"cached_tokens": 20}})
    cost = book.call(result("hosted", usage, 0.5))
    assert (cost.model, cost.kind, cost.estimated) == ("hosted", "tokens", False)
    assert cost.tokens == TokenCounts(100, 50, 20)
    assert cost.usd == pytest.approx((100 * 1 + 50 * 4) / 1e6)
    assert cost.to_record() == {"kind": "tokens", "usd": cost.usd, "seconds": 0.5,
                                "rates": cost.rates, "estimated": False}
    free = book.call(result("free", usage, 0.5), estimated=True)
    assert (free.kind, free.usd, free.estimated) == ("none", 0.0, True)
    assert book.call(result("not-configured", usage, 1.0)).kind == "none"


def stream_of(chunks: list[GenerationChunk]) -> StreamAccumulator:
    accumulator = StreamAccumulator(ModelTuple(name="m", engine="http"), 1)
    for chunk in chunks:
        accumulator.add(chunk)
    return accumulator


def test_a_cut_stream_counts_its_pieces_and_estimates_its_prompt() -> None:
    request = GenerationRequest(request_id="r", kind="chat", sampling=SamplingParams(),
                                messages=[{"role": "user", "content": "a" * 40}])
    accumulator = stream_of([GenerationChunk(index=0, text="one"),
                             GenerationChunk(index=0, text="two"),
                             GenerationChunk(index=0, text="")])  # a role-only delta
    usage, estimated = usage_so_far(accumulator.usage, accumulator.result(),
                                    accumulator.pieces, request)
    assert estimated and (usage.prompt_tokens, usage.completion_tokens) == (11, 2)
    assert prompt_tokens_estimate(request) == 11  # "user" + 40 bytes, 4 bytes a token


def test_a_cut_stream_counts_token_ids_when_it_carried_them() -> None:
    request = GenerationRequest(request_id="r", kind="completion", sampling=SamplingParams(),
                                prompt=[5, 6, 7])
    accumulator = stream_of([GenerationChunk(index=0, text="ab", token_ids=[1, 2]),
                             GenerationChunk(index=0, text="c", token_ids=[3])])
    usage, estimated = usage_so_far(accumulator.usage, accumulator.result(),
                                    accumulator.pieces, request)
    assert estimated and (usage.prompt_tokens, usage.completion_tokens) == (3, 3)


def test_a_stream_whose_model_reported_usage_keeps_it() -> None:
    request = GenerationRequest(request_id="r", kind="completion", sampling=SamplingParams(),
                                prompt="hello")
    accumulator = stream_of([GenerationChunk(index=0, text="ab"),
                             GenerationChunk(index=None, usage=Usage(7, 9))])
    usage, estimated = usage_so_far(accumulator.usage, accumulator.result(),
                                    accumulator.pieces, request)
    assert not estimated and (usage.prompt_tokens, usage.completion_tokens) == (7, 9)


@pytest.mark.parametrize(("usd", "header"), [(0.0, "0.0"), (1.5e-06, "0.0000015"),
                                             (0.25, "0.25"), (12.0, "12.0")])
def test_the_cost_header_is_a_plain_decimal(usd: float, header: str) -> None:
    cost = PriceBook({}).call(result("m", Usage(), 0.0))
    assert cost_header([replace(cost, usd=usd)]) == header
