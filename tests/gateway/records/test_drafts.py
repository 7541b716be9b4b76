"""Drafts: a record whose model calls came as upstream JSON bodies is spooled with those bytes
and finished by the delivery process; the finished record must be the record, byte for byte."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway import protocol
from gateway.backends.wire import parse_response
from gateway.kernel.generation import GenerationResult, Timing
from gateway.listener import CompletedRequest, RequestContext
from gateway.records.builder import DRAFT, TupleCache, encode_record, prepare_head
from gateway.records.schema import DecodeRecord, canonical_json
from gateway.records.spool import Segment, Spool
from router.decision import Decision
from tests.gateway.records.conftest import LARGE, MODEL

CHAT_WIRE: dict[str, Any] = {
    "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "smol",
    "system_fingerprint": "fp_1", "prompt_token_ids": [1, 2, 3],
    "choices": [{
        "index": 0, "finish_reason": "stop", "stop_reason": None, "token_ids": [7, 8],
        "message": {"role": "assistant", "content": "Paris, naïvement ✓",
                    "reasoning_content": "geography"},
        "logprobs": {"content": [
            {"token": "Par", "logprob": -0.125, "bytes": [80, 97, 114],
             "top_logprobs": [{"token": "Par", "logprob": -0.125, "bytes": [80, 97, 114]},
                              {"token": "Lon", "logprob": -2.5, "bytes": [76, 111, 110]}]},
            {"token": "is", "logprob": -1e-05, "bytes": None, "top_logprobs": []}]},
    }],
    "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5,
              "prompt_tokens_details": {"cached_tokens": 1}},
}
COMPLETION_WIRE: dict[str, Any] = {
    "id": "cmpl-1", "object": "text_completion", "created": 1, "model": "smol",
    "choices": [{"index": 0, "text": " blue.", "finish_reason": "length",
                 "logprobs": {"tokens": [" blue", "."], "token_logprobs": [None, -0.75],
                              "top_logprobs": [None, {".": -0.75, "!": -1.5}],
                              "text_offset": [0, 5]}},
                {"index": 1, "text": " grey", "finish_reason": "stop", "logprobs": None}],
    "usage": {"prompt_tokens": 4, "completion_tokens": 3, "total_tokens": 7},
}


def http_result(wire: dict[str, Any], chat: bool, model: Any = MODEL) -> GenerationResult:
    """What :class:`~gateway.backends.http.HTTPBackend` makes of an upstream JSON body."""
    raw = orjson.dumps(wire)
    choices, usage, prompt_ids, extra = parse_response(orjson.loads(raw), chat)
    return GenerationResult(model=model, choices=choices, usage=usage,
                            timing=Timing(started_at=1.0, first_token_s=None, total_s=0.25),
                            prompt_token_ids=prompt_ids, extra=extra,
                            runtime={"upstream": "http://up/v1", "upstream_model": "smol"},
                            raw_body=raw)


def done_with(results: list[GenerationResult], chat: bool = True,
              decision: Decision | None = None) -> CompletedRequest:
    body: dict[str, Any] = {"model": "auto", "temperature": 0.5, "seed": 9, "logprobs": True}
    if chat:
        body["messages"] = [{"role": "user", "content": "Capital of France?"}]
        body["top_logprobs"] = 2
        client: protocol.OpenAIRequest = protocol.ChatCompletionRequest.model_validate(body)
    else:
        body.update(prompt="The sky is", logprobs=2, n=2)
        client = protocol.CompletionRequest.model_validate(body)
    gen = client.to_generation_request("draft-req")
    ctx = RequestContext(request_id="draft-req", caller="team-a",
                         operation="/v1/chat/completions" if chat else "/v1/completions")
    return CompletedRequest(ctx, "auto", client, gen, results, decision, stream=False,
                            status=200, finished_at=2.0)


def finished(line_body: bytes, tmp_path: Path) -> bytes:
    """The body the store gets for a spooled line: through a real spool segment and its reader
    (what the delivery process does)."""
    spool = Spool(tmp_path / "spool", fsync="never")
    spool.open()
    spool.append(line_body)
    assert spool.live is not None
    segment = Segment.open(spool.live.path)
    [entry] = segment.read(0, 10)
    segment.close()
    spool.close()
    assert entry.record is not None
    return entry.record.body


CASCADE = Decision(route="auto", mode="cascade", tier="large", model="large",
                   verifier_id="v1", verifier_sha256="cd" * 32, feature_digest="ef" * 32,
                   score=0.75, threshold=0.5, escalated=True, candidates=["small", "large"])


@pytest.mark.parametrize(("wires", "chat", "decision"), [
    ([CHAT_WIRE], True, None),
    ([COMPLETION_WIRE], False, None),
    ([CHAT_WIRE, CHAT_WIRE], True, CASCADE),
], ids=["chat", "completion", "cascade"])
def test_a_finished_draft_is_the_record(wires: list[dict[str, Any]], chat: bool,
                                        decision: Decision | None, tmp_path: Path) -> None:
    models = [MODEL, LARGE][:len(wires)]
    done = done_with([http_result(w, chat, m) for w, m in zip(wires, models, strict=True)],
                     chat, decision)
    prepare_head(done.ctx, done.client_request, done.request)
    draft = encode_record(done, TupleCache())
    record = encode_record(done, TupleCache(), drafts=False)
    assert orjson.loads(draft)[DRAFT] == 1 and DRAFT not in orjson.loads(record)
    assert b'"choices"' in record and b'"wire"' in draft  # the draft left the outputs unbuilt
    assert finished(draft, tmp_path) == record == canonical_json(orjson.loads(record))
    DecodeRecord.model_validate(orjson.loads(record))


def test_no_draft_when_a_call_has_no_wire_bytes_or_content_is_redacted(tmp_path: Path) -> None:
    wired = http_result(CHAT_WIRE, chat=True)
    unwired = http_result(CHAT_WIRE, chat=True, model=LARGE)
    unwired.raw_body = None  # an engine call, or a streamed one
    mixed = encode_record(done_with([wired, unwired], decision=CASCADE), TupleCache())
    redacted = encode_record(done_with([wired]), TupleCache(), redact=True)
    for body in (mixed, redacted):
        assert DRAFT not in orjson.loads(body)
        assert body == canonical_json(orjson.loads(body))
        assert finished(body, tmp_path / str(len(body))) == body
    assert b"Paris" not in redacted  # a draft would have carried the answer in its wire bytes

