"""The decode record: what the builder makes of an answered request, canonical JSON, redaction."""

from __future__ import annotations

import hashlib
from typing import Any

import orjson
import pytest

from gateway.records.builder import TupleCache, build_record, encode_record, prepare_head
from gateway.records.chain import content_sha256, link_digest
from gateway.records.schema import (
    SCHEMA_VERSION,
    DecodeRecord,
    RecordLogprobs,
    Redacted,
    canonical_json,
)
from router.decision import Decision
from tests.gateway.records.conftest import MODEL, WEIGHTS, answered, record_of


def test_record_holds_everything_the_issue_names() -> None:
    done = answered("What is 2+2?", seed=7, caller="team-a")
    record = DecodeRecord.model_validate(orjson.loads(canonical_json(
        build_record(done, TupleCache()))))
    assert record.schema_version == SCHEMA_VERSION
    assert record.record_id == record.request_id == done.ctx.request_id
    assert record.caller == "team-a"
    assert record.route == "small"
    assert record.received_at <= record.finished_at
    assert record.input.kind == "chat"
    assert record.input.messages == [{"role": "user", "content": "What is 2+2?"}]
    assert record.sampling.temperature == 0.7
    assert record.sampling.logprobs == 1
    assert record.seed.value == 7 and record.seed.source == "client"
    assert record.client_params["seed"] == 7 and "messages" not in record.client_params
    call = record.calls[0]
    assert call.model["base_weights_sha256"] == WEIGHTS
    assert call.model["quantization"]["method"] == "int8-dynamic"
    assert call.tuple_digest == MODEL.digest()
    assert call.runtime["device"] == "cpu"
    assert call.prompt_token_ids == [1, 2, 3, 4, 5]
    assert call.rendered_prompt == "<user>What is 2+2?</user>"
    choice = call.choices[0]
    assert choice.token_ids == [11, 12, 13] and choice.finish_reason == "stop"
    assert isinstance(choice.logprobs, RecordLogprobs)
    assert choice.logprobs.logprob == [-0.5, None, -0.25]  # -inf → null
    assert choice.logprobs.token == ["a", "n", "s"] and choice.logprobs.token_id == [11, 12, 13]
    assert choice.logprobs.top[0] == [(11, -0.5, "a", [97])] and choice.logprobs.top[1] == []
    assert call.usage.total_tokens == 8
    assert record.decision is None and record.chain is None


def test_a_drawn_seed_is_the_gateways() -> None:
    record = DecodeRecord.model_validate(record_of(seed=None, temperature=0.9))
    assert record.seed.value == 1234 and record.seed.source == "gateway"
    greedy = DecodeRecord.model_validate(record_of(temperature=0.0))
    assert greedy.seed.value is None and greedy.seed.source == "none"


def test_the_decision_and_every_candidate_are_recorded() -> None:
    decision = Decision(route="auto", mode="cascade", tier="large", model="large",
                        verifier_id="v1", verifier_sha256="cd" * 32, feature_digest="ef" * 32,
                        score=0.81, threshold=0.5, escalated=True, candidates=["small", "large"])
    record = DecodeRecord.model_validate(record_of(route="auto", decision=decision))
    assert record.decision is not None
    assert record.decision.model_dump() == decision.to_dict()
    assert record.escalated
    assert [c.model["name"] for c in record.calls] == ["small", "large"]  # the rejected one too


def test_canonical_json_is_sorted_compact_utf8() -> None:
    value = {"b": 1, "a": {"d": [1.5, None], "c": "é✓"}}
    text = canonical_json(value)
    assert text == '{"a":{"c":"é✓","d":[1.5,null]},"b":1}'.encode()
    assert canonical_json({"n": 2**70}) == b'{"n":"1180591620717411303424"}'


def test_redaction_keeps_a_digest_of_what_it_removes() -> None:
    plain = record_of("my secret diagnosis")
    record = build_record(answered("my secret diagnosis"), TupleCache(), redact=True)
    text = canonical_json(record)
    assert b"secret" not in text and b"<user>" not in text
    parsed = DecodeRecord.model_validate(record)
    messages = parsed.input.messages
    assert isinstance(messages, Redacted)
    assert messages.sha256 == hashlib.sha256(
        canonical_json(plain["input"]["messages"])).hexdigest()
    choice = parsed.calls[0].choices[0]
    assert isinstance(choice.text, Redacted) and isinstance(choice.token_ids, Redacted)
    assert isinstance(choice.logprobs, Redacted)
    assert "input.messages" in parsed.redacted and "calls.0.choices.0.text" in parsed.redacted
    assert parsed.calls[0].usage.completion_tokens == 3  # what is not content stays


def test_a_link_digest_covers_content_position_and_predecessor() -> None:
    body = canonical_json(record_of())
    args: dict[str, Any] = {"chain_id": "main", "seq": 1, "record_id": "r1", "prev_digest": "p",
                            "content": content_sha256(body), "stored_at": 1.0}
    digest = link_digest(**args)
    assert digest.startswith("sha256:") and link_digest(**args) == digest
    for key, other in (("chain_id", "x"), ("seq", 2), ("record_id", "r2"),
                       ("prev_digest", "q"), ("content", content_sha256(body + b" ")),
                       ("stored_at", 2.0)):
        assert link_digest(**{**args, key: other}) != digest, key


def test_every_record_field_and_setting_is_documented() -> None:
    from pydantic import BaseModel

    from gateway.records import schema
    from gateway.records.settings import RecordsSettings
    from tests.conftest import REPO

    records_doc = (REPO / "docs" / "records.md").read_text()
    config_doc = (REPO / "docs" / "configuration.md").read_text()
    spelled: list[tuple[type[BaseModel], str]] = [
        (schema.DecodeRecord, "`{}`"), (schema.RecordInput, "`input.{}`"),
        (schema.EffectiveSeed, "`seed.{}`"), (schema.ModelCall, "`calls[].{}`"),
        (schema.RecordSampling, "`{}`"), (schema.RecordDecision, "`{}`"),
        (schema.RecordChoice, "`{}`"), (schema.RecordLogprobs, "`{}`"),
        (schema.RecordUsage, "`{}`"), (schema.RecordTiming, "`{}`"),
        (schema.ChainLink, "`{}`")]
    missing = [f"{model.__name__}.{name}" for model, form in spelled
               for name in model.model_fields if form.format(name) not in records_doc]
    assert not missing, f"record fields missing from docs/records.md: {missing}"
    assert f"schema version {SCHEMA_VERSION}" in records_doc
    missing = [name for name in RecordsSettings.model_fields if f"`{name}`" not in config_doc]
    assert not missing, f"[records] settings missing from docs/configuration.md: {missing}"


def test_client_params_are_what_the_client_set() -> None:
    from gateway import protocol
    from gateway.records.builder import _client_params

    request = protocol.ChatCompletionRequest.model_validate({
        "model": "m", "messages": [{"role": "user", "content": "x"}], "stream": True,
        "stream_options": {"include_usage": True}, "vendor_field": {"a": 1},
        "temperature": 0.3, "stop": ["a"], "tools": [{"type": "function"}]})
    assert _client_params(request) == request.model_dump(
        mode="json", exclude_unset=True, exclude={"messages", "prompt"})


@pytest.mark.parametrize("redact", [False, True])
def test_a_head_prepared_ahead_gives_the_same_record(redact: bool) -> None:
    inline_done = answered("the same question", request_id="same", seed=3)
    ahead_done = answered("the same question", request_id="same", seed=3)
    prepare_head(ahead_done.ctx, ahead_done.client_request, ahead_done.request, redact)
    assert ahead_done.ctx.prepared.get("records") is not None
    ahead_done.finished_at = inline_done.finished_at
    inline = orjson.loads(encode_record(inline_done, TupleCache(), redact))
    ahead = encode_record(ahead_done, TupleCache(), redact)
    assert ahead == canonical_json(orjson.loads(ahead))  # still canonical JSON
    ahead_record = orjson.loads(ahead)
    assert abs(inline.pop("received_at") - ahead_record.pop("received_at")) < 1.0
    assert ahead_record == inline
    DecodeRecord.model_validate(orjson.loads(ahead))
    assert ("input.messages" in ahead_record["redacted"]) is redact
