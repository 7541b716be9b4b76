"""``responses = "forward"``: ``/v1/responses`` to an HTTP upstream's own Responses API, with the
official openai SDK through a real gateway and the scriptable upstream (whose own endpoint
answers ``"responses: ..."``; its chat answers ``"echo: ..."``)."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest

from gateway.backends.responses_wire import EventReader, choice_of, usage_of
from gateway.cli.main import main
from gateway.kernel.errors import UpstreamError
from tests.conftest import GatewayFactory, ServerProcess, upstream_model, write_config

API_KEY = "sk-forward-secret-0123456789"


@pytest.fixture(scope="module")
def sections(upstream: ServerProcess, tmp_path_factory: pytest.TempPathFactory
             ) -> dict[str, dict[str, Any]]:
    directory = tmp_path_factory.mktemp("forward")
    return {
        "models.fwd": upstream_model(upstream, "echo", responses="forward", api_key=API_KEY),
        "models.translated": upstream_model(upstream, "echo"),
        "models.fwd-cut": upstream_model(upstream, "cut", responses="forward", cost={
            "kind": "tokens", "input_usd_per_mtok": 1.0, "output_usd_per_mtok": 1e6}),
        "models.fwd-400": upstream_model(upstream, "status-400", responses="forward"),
        "models.fwd-503": upstream_model(upstream, "status-503", responses="forward"),
        "records": {"sqlite_path": str(directory / "records.sqlite3"),
                    "spool_dir": str(directory / "spool"), "flush_interval_s": 0.01},
    }


@pytest.fixture(scope="module")
def gateway(gateway_factory: GatewayFactory, sections: dict[str, dict[str, Any]]
            ) -> ServerProcess:
    return gateway_factory(sections)


@pytest.fixture(scope="module")
def client(gateway: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0)


def forwarded_count(upstream: ServerProcess) -> int:
    return int(httpx.get(upstream.url + "/stats").json()["responses"])


def tokens(gateway: ServerProcess, model: str, direction: str) -> float:
    for line in httpx.get(gateway.url + "/metrics").text.splitlines():
        if line.startswith("tiergate_tokens_total{") and f'model="{model}"' in line \
                and f'direction="{direction}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def record(sections: dict[str, dict[str, Any]], record_id: str) -> dict[str, Any]:
    """The stored record ``record_id`` (the writer delivers within a few flush intervals)."""
    for _ in range(400):
        with sqlite3.connect(sections["records"]["sqlite_path"]) as conn:
            try:
                bodies = [orjson.loads(b) for (b,) in conn.execute("SELECT body FROM records")]
            except sqlite3.OperationalError:  # the store is not created yet
                bodies = []
        found = [b for b in bodies if b["record_id"] == record_id]
        if found:
            return found[0]
        time.sleep(0.05)
    raise AssertionError(f"record {record_id} never stored")


def test_forwarded_whole(client: openai.OpenAI, gateway: ServerProcess,
                         upstream: ServerProcess, sections: dict[str, dict[str, Any]]) -> None:
    before, tokens_before = forwarded_count(upstream), tokens(gateway, "fwd", "out")
    raw = client.responses.with_raw_response.create(model="fwd", input="what is forwarded",
                                                    max_output_tokens=100)
    response = raw.parse()
    assert response.output_text == "responses: what is forwarded"
    assert forwarded_count(upstream) == before + 1
    assert response.usage is not None and response.usage.input_tokens == 3
    assert raw.headers["x-tiergate-model"].startswith("fwd")
    assert raw.headers["x-request-id"] and "x-tiergate-seed" not in raw.headers
    sent = httpx.get(upstream.url + "/last").json()
    assert sent["body"]["model"] == "echo" and sent["body"]["max_output_tokens"] == 100
    assert sent["headers"]["Authorization"] == f"Bearer {API_KEY}"
    assert tokens(gateway, "fwd", "out") == tokens_before + response.usage.output_tokens
    stored = record(sections, raw.headers["x-request-id"])
    (call,) = stored["calls"]
    assert call["runtime"]["forwarded"]["body"]["input"] == "what is forwarded"
    assert call["extra"]["response"]["output"][0]["content"][0]["text"] == response.output_text
    assert call["choices"][0]["text"] == response.output_text
    assert call["usage"]["completion_tokens"] == response.usage.output_tokens


def test_forwarded_stream_relays_the_upstreams_events(
        client: openai.OpenAI, gateway: ServerProcess, upstream: ServerProcess,
        sections: dict[str, dict[str, Any]]) -> None:
    before = forwarded_count(upstream)
    with client.responses.with_streaming_response.create(
            model="fwd", input="stream it", stream=True) as raw:
        request_id = raw.headers["x-request-id"]
        assert raw.headers["x-tiergate-model"].startswith("fwd")
        events = list(raw.parse())
    assert forwarded_count(upstream) == before + 1
    kinds = [e.type for e in events]
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert set(kinds[1:-1]) == {"response.output_text.delta"}
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == "responses: stream it"
    usage = events[-1].response.usage
    assert usage is not None and usage.input_tokens == 2
    (call,) = record(sections, request_id)["calls"]
    assert call["choices"][0]["text"] == text
    assert call["usage"]["completion_tokens"] == usage.output_tokens


def test_not_configured_is_translated_to_chat(client: openai.OpenAI,
                                              upstream: ServerProcess) -> None:
    before = forwarded_count(upstream)
    response = client.responses.create(model="translated", input="what is translated")
    assert response.output_text == "echo: what is translated"
    events = list(client.responses.create(model="translated", input="x", stream=True))
    assert events[1].type == "response.in_progress"  # the gateway's own event sequence
    assert forwarded_count(upstream) == before


def test_upstream_errors_are_openai_errors(client: openai.OpenAI, gateway: ServerProcess) -> None:
    with pytest.raises(openai.BadRequestError) as bad:
        client.responses.create(model="fwd-400", input=API_KEY)
    assert "fake upstream error 400" in str(bad.value)
    with pytest.raises(openai.InternalServerError) as down:
        client.responses.create(model="fwd-503", input="x", stream=True)
    assert down.value.status_code == 503
    events = list(client.responses.create(model="fwd-cut", input="cut me short", stream=True))
    assert [e.type for e in events[-2:]] == ["error", "response.failed"]
    assert events[-1].sequence_number == events[-2].sequence_number + 1
    assert API_KEY not in gateway.logs()


def test_a_forwarded_stream_cut_short_accounts_what_it_relayed(
        client: openai.OpenAI, sections: dict[str, dict[str, Any]]) -> None:
    with client.responses.with_streaming_response.create(
            model="fwd-cut", input="cut me short", stream=True) as raw:
        record_id = raw.headers["x-request-id"]
        events = list(raw.parse())
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert deltas and events[-1].type == "response.failed"
    stored = record(sections, record_id)
    assert stored["status"] >= 500  # the upstream went away mid-answer
    (call,) = stored["calls"]
    assert call["choices"][0]["text"] == "".join(deltas)
    assert call["usage"]["completion_tokens"] == len(deltas)  # one token a delta, counted here
    assert call["cost"]["estimated"] is True
    # $1 per output token (and $1 per million prompt tokens, estimated from the input's text)
    assert call["cost"]["usd"] == pytest.approx(len(deltas) + call["usage"]["prompt_tokens"] / 1e6)


def test_replay_refuses_a_forwarded_call(client: openai.OpenAI, sections: dict[str, Any],
                                         capsys: pytest.CaptureFixture[str],
                                         tmp_path: Path) -> None:
    raw = client.responses.with_raw_response.create(model="fwd", input="replay me")
    record_id = raw.headers["x-request-id"]
    record(sections, record_id)
    config = write_config(tmp_path / "replay.toml", sections)
    code = main(["replay", record_id, "--config", str(config)])
    out = capsys.readouterr()
    assert code == 3 and "REFUSED" in out.out + out.err
    assert "/v1/responses" in out.out + out.err


def test_event_reader_splits_events_across_reads() -> None:
    reader = EventReader("fwd")
    first = b'event: response.created\ndata: {"type": "response.created", "sequence_number": 0}'
    assert reader.feed(first) == []  # not complete yet
    events = reader.feed(b'\r\n\r\n: a comment\n\ndata: {"type": "response.output_text.delta"'
                         b', "delta": "a"}\n\ndata: {"type"')
    assert [e.type for e in events] == ["response.created", "response.output_text.delta"]
    assert events[0].raw.startswith(b"event: response.created\n")
    with pytest.raises(UpstreamError, match="invalid SSE event"):
        reader.feed(b'"\n\n')


def test_usage_and_choice_of_an_incomplete_response() -> None:
    response = {"status": "incomplete", "incomplete_details": {"reason": "max_output_tokens"},
                "output": [{"type": "message", "content": [
                    {"type": "output_text", "text": "ab"}, {"type": "refusal"},
                    {"type": "output_text", "text": "c"}]}],
                "usage": {"input_tokens": 4, "output_tokens": 2, "total_tokens": 6}}
    assert choice_of(response).text == "abc" and choice_of(response).finish_reason == "length"
    usage = usage_of(response)
    assert (usage.prompt_tokens, usage.completion_tokens) == (4, 2)
