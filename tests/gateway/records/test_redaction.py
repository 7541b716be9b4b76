"""Redaction that covers everything: with ``redact = true`` a marker planted in every text field a
client can send appears in no byte of the record, the spool, its shared-memory twins or the
SQLite store (read raw); numbers and switches stay in clear."""

from __future__ import annotations

import contextlib
import hashlib
import sqlite3
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from gateway import protocol
from gateway.http.app import create_app
from gateway.kernel.generation import ChoiceResult, GenerationResult, Usage
from gateway.listener import CompletedRequest, RequestContext
from gateway.records.builder import TupleCache, build_record, encode_record
from gateway.records.schema import DecodeRecord, Redacted, canonical_json
from gateway.records.staging import staging_dir
from gateway.settings import Settings
from tests.conftest import ServerProcess, upstream_model
from tests.gateway.records.conftest import MODEL

MARKER = "PLANTED-7f3a9c"


def _marked(name: str) -> str:
    return f"{MARKER}-{name}"


def chat_body() -> dict[str, Any]:
    """A chat request with the marker in every field that can hold a client's text."""
    return {
        "model": "echo", "temperature": 0.5, "max_tokens": 64, "seed": 7, "n": 1,
        "messages": [
            {"role": "system", "content": _marked("system"), "name": _marked("name")},
            {"role": "user", "content": [{"type": "text", "text": _marked("part")}]},
            {"role": "assistant", "content": None, "tool_calls": [{
                "id": "call_1", "type": "function",
                "function": {"name": "lookup", "arguments": _marked("arguments")}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": _marked("tool-result")},
            {"role": "user", "content": _marked("user")},
        ],
        "tools": [{"type": "function", "function": {
            "name": "lookup", "description": _marked("tool-description"),
            "parameters": {"type": "object", "properties": {
                "q": {"type": "string", "description": _marked("parameter-schema")}}}}}],
        "tool_choice": {"type": "function", "function": {"name": _marked("tool-choice")}},
        "response_format": {"type": "json_schema", "json_schema": {
            "name": "answer", "schema": {"title": _marked("response-schema")}}},
        "stop": [_marked("stop")],
        "user": _marked("user-field"),
        "metadata": {"ticket": _marked("metadata")},
        "documents": [{"title": "doc", "text": _marked("documents")}],
        "some_future_field": {"deep": [_marked("unknown")]},
        "logit_bias": {"50256": -100},
    }


def completion_body() -> dict[str, Any]:
    return {"model": "echo", "prompt": _marked("prompt"), "suffix": _marked("suffix"),
            "max_tokens": 64, "temperature": 0.0, "echo": False, "stop": _marked("stop"),
            "user": _marked("user-field"), "unknown_text": _marked("unknown")}


def completed(body: dict[str, Any]) -> CompletedRequest:
    """``body`` answered, the upstream repeating the marker wherever it can."""
    chat = "messages" in body
    client = (protocol.ChatCompletionRequest if chat else protocol.CompletionRequest
              ).model_validate(body)
    gen = client.to_generation_request("req-redaction")
    result = GenerationResult(
        model=MODEL,
        choices=[ChoiceResult(index=0, text=_marked("answer"), finish_reason="stop",
                              token_ids=[1, 2], stop_reason=_marked("stop"),
                              extra={"reasoning_content": _marked("reasoning")})],
        usage=Usage(prompt_tokens=3, completion_tokens=2,
                    extra={"prompt_tokens_details": {"cached_tokens": 1}}),
        prompt_token_ids=[5, 6, 7], rendered_prompt=_marked("rendered"),
        extra={"system_fingerprint": _marked("upstream-extra"), "latency_ms": 12})
    ctx = RequestContext(request_id="req-redaction", caller="team-a",
                         operation="/v1/chat/completions" if chat else "/v1/completions")
    return CompletedRequest(ctx, "echo", client, gen, [result], None, stream=False, status=200)


@pytest.mark.parametrize("body", [chat_body(), completion_body()], ids=["chat", "completion"])
def test_no_client_text_is_left_in_a_redacted_record(body: dict[str, Any]) -> None:
    plain = encode_record(completed(body), TupleCache())
    assert plain.count(MARKER.encode()) >= 5  # the control: unredacted, it is everywhere
    record = build_record(completed(body), TupleCache(), redact=True)
    assert MARKER.encode() not in canonical_json(record)
    parsed = DecodeRecord.model_validate(record)
    for name in ("stop", "user"):
        assert isinstance(record["client_params"][name], dict)
        assert record["client_params"][name]["redacted"] is True
        assert f"client_params.{name}" in parsed.redacted
    assert isinstance(parsed.sampling.stop, Redacted)
    assert isinstance(parsed.calls[0].choices[0].stop_reason, Redacted)
    # numbers and switches stay: what the decode ran with is still auditable
    assert record["client_params"]["model"] == "echo"
    assert record["client_params"]["max_tokens"] == 64
    assert parsed.sampling.max_tokens == 64 and parsed.calls[0].usage.completion_tokens == 2
    assert parsed.calls[0].usage.extra == {"prompt_tokens_details": {"cached_tokens": 1}}
    assert parsed.calls[0].extra["latency_ms"] == 12
    assert len(set(record["redacted"])) == len(record["redacted"])


def test_every_field_not_listed_as_clear_is_cut_also_a_new_one() -> None:
    record = build_record(completed(chat_body()), TupleCache(), redact=True)
    params, passthrough = record["client_params"], record["input"]["passthrough"]
    for name in ("tools", "tool_choice", "response_format", "metadata", "documents",
                 "some_future_field", "logit_bias", "user"):
        assert params[name]["redacted"] is True, name
        assert passthrough[name]["redacted"] is True, name
        assert params[name]["sha256"] == hashlib.sha256(
            canonical_json(chat_body()[name])).hexdigest()
    assert {params[k] for k in ("temperature", "seed", "n")} == {0.5, 7, 1}


def test_a_redacted_record_does_not_change_the_answer_sent() -> None:
    done = completed(chat_body())
    extra = dict(done.results[0].extra)
    usage_extra = dict(done.results[0].usage.extra)
    encode_record(done, TupleCache(), redact=True)
    assert done.results[0].extra == extra and done.results[0].usage.extra == usage_extra


def _raw(paths: list[Path]) -> bytes:
    return b"".join(p.read_bytes() for p in paths if p.is_file())


async def test_the_marker_is_in_no_byte_of_the_spool_its_twins_or_the_store(
        upstream: ServerProcess, tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    config = Settings.model_validate({
        "models": {"echo": upstream_model(upstream, "echo")},
        "records": {"sink": "sqlite", "sqlite_path": str(tmp_path / "db" / "records.sqlite3"),
                    "spool_dir": str(spool), "redact": True, "store_interval_s": 0.05},
        "telemetry": {"tracing": False}, "canary": {"dir": str(tmp_path / "canary")}})
    app = create_app(config)
    twins = staging_dir(spool, Path("/dev/shm"))
    ids: list[bytes] = []
    async with app.lifespan(), httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://gateway") as http:
        for path, body in (("/v1/chat/completions", chat_body()),
                           ("/v1/completions", completion_body()),
                           ("/v1/chat/completions", {**chat_body(), "stream": True})):
            answer = await http.post(path, json=body)
            assert answer.status_code == 200, answer.text
            ids.append(answer.headers["x-tiergate-record-id"].encode())
            if not body.get("stream"):  # the echo upstream repeats it: the client gets it
                assert MARKER in answer.text
        staged = sorted(twins.glob("*.spool"))
        assert all(i in _raw(staged) for i in ids)  # the records are there, in shared memory
        assert MARKER.encode() not in _raw(staged)
        recorder = app.gateway.recorder
        assert recorder is not None and await recorder.flush()
        assert MARKER.encode() not in _raw(sorted(spool.iterdir()))
        assert MARKER.encode() not in _raw(sorted((tmp_path / "db").iterdir()))  # with -wal
    # closed: the database (its -wal and -shm too, while they exist) and what the spool kept
    store = _raw(sorted((tmp_path / "db").iterdir()))
    assert all(i in store for i in ids) and MARKER.encode() not in store
    assert MARKER.encode() not in _raw(sorted(spool.iterdir()))
    assert not twins.exists() or MARKER.encode() not in _raw(sorted(twins.iterdir()))
    with contextlib.closing(sqlite3.connect(tmp_path / "db" / "records.sqlite3")) as conn:
        bodies = [orjson.loads(row[0]) for row in conn.execute("SELECT body FROM records")]
    assert len(bodies) == 3
    assert all({"input.messages", "input.prompt"} & set(b["redacted"]) for b in bodies)
