"""The Anthropic Messages API backend: the translation both ways (in-process), and a real
tiergate in front of the fake Anthropic server (gateway.testing.anthropic_upstream), driven
with the official ``openai`` SDK."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import orjson
import pytest

from gateway.backends.anthropic_wire import (
    StreamTranslator,
    messages_body,
    parse_message,
    translate_tool_choice,
)
from gateway.kernel.errors import InvalidRequestError, ServiceUnavailableError
from gateway.kernel.generation import GenerationChunk, GenerationRequest, SamplingParams
from tests.conftest import (
    GatewayFactory,
    ServerProcess,
    free_port,
    start_server,
    upstream_model,
)
from tests.gateway.records.test_replay_routed import rows
from tests.router.test_routing import manifest_sha256
from verifiers.training import train_artifact

API_KEY = "anthropic-test-key-0123456789abcdef"
TOOLS = [{"type": "function", "function": {
    "name": "lookup", "description": "Look a thing up",
    "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}}}]


def chat(messages: list[dict[str, Any]], **passthrough: Any) -> GenerationRequest:
    sampling = passthrough.pop("sampling", SamplingParams())
    return GenerationRequest(request_id="r1", kind="chat", sampling=sampling,
                             messages=messages, passthrough=passthrough)


# -- translation, in-process -------------------------------------------------------------------


def test_request_translation_system_tools_results_and_sampling() -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "find x"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "lookup", "arguments": '{"q": "x"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "x is 42"},
        {"role": "user", "content": [{"type": "text", "text": "and?"}]},
    ]
    sampling = SamplingParams(temperature=0.2, top_p=0.9, top_k=5, max_tokens=33, stop=["##"])
    body = messages_body(chat(messages, sampling=sampling, tools=TOOLS, tool_choice="required",
                              parallel_tool_calls=False, user="u-7"),
                         "claude-x", 1024, stream=True)
    assert body["system"] == "Be brief."
    assert body["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "find x"}]},
        {"role": "assistant", "content": [
            {"type": "tool_use", "id": "call_1", "name": "lookup", "input": {"q": "x"}}]},
        {"role": "user", "content": [  # the tool result and the next user turn: one turn
            {"type": "tool_result", "tool_use_id": "call_1", "content": "x is 42"},
            {"type": "text", "text": "and?"}]},
    ]
    assert body["tools"] == [{"name": "lookup", "description": "Look a thing up",
                              "input_schema": TOOLS[0]["function"]["parameters"]}]
    assert body["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}
    assert (body["max_tokens"], body["temperature"], body["top_p"], body["top_k"]) == \
        (33, 0.2, 0.9, 5)
    assert body["stop_sequences"] == ["##"]
    assert body["metadata"] == {"user_id": "u-7"}
    assert body["stream"] is True


def test_request_defaults_and_tool_choice_forms() -> None:
    body = messages_body(chat([{"role": "user", "content": "hi"}]), "claude-x", 77, False)
    assert body["max_tokens"] == 77 and "top_p" not in body and "stream" not in body
    assert "system" not in body and "tools" not in body
    assert translate_tool_choice("auto", None) == {"type": "auto"}
    assert translate_tool_choice("none", None) == {"type": "none"}
    assert translate_tool_choice({"type": "function", "function": {"name": "f"}}, None) == \
        {"type": "tool", "name": "f"}


@pytest.mark.parametrize(("request_", "param"), [
    (GenerationRequest("r", "completion", SamplingParams(), prompt="hi"), "prompt"),
    (chat([{"role": "user", "content": "hi"}], sampling=SamplingParams(n=2)), "n"),
    (chat([{"role": "user", "content": "hi"}], sampling=SamplingParams(logprobs=2)),
     "logprobs"),
    (chat([{"role": "user", "content": "hi"}], sampling=SamplingParams(temperature=1.5)),
     "temperature"),
    (chat([{"role": "user", "content": "hi"}], response_format={"type": "json_object"}),
     "response_format"),
    (chat([{"role": "system", "content": "only a system prompt"}]), "messages"),
    (chat([{"role": "tool", "content": "x"}]), "messages[0].tool_call_id"),
])
def test_what_the_messages_api_cannot_honour_is_a_400_naming_it(
        request_: GenerationRequest, param: str) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        messages_body(request_, "claude-x", 1024, stream=False)
    assert caught.value.param == param and caught.value.status == 400


def test_response_translation_text_tool_use_and_usage() -> None:
    choice, usage = parse_message({
        "content": [{"type": "tool_use", "id": "toolu_1", "name": "lookup",
                     "input": {"q": "x"}}],
        "stop_reason": "tool_use", "stop_sequence": None,
        "usage": {"input_tokens": 10, "output_tokens": 4, "cache_read_input_tokens": 5}})
    assert choice.finish_reason == "tool_calls" and choice.text == ""
    assert choice.extra == {"content": None, "tool_calls": [
        {"id": "toolu_1", "type": "function",
         "function": {"name": "lookup", "arguments": '{"q":"x"}'}}]}
    assert usage.to_openai() == {"prompt_tokens": 15, "completion_tokens": 4,
                                 "total_tokens": 19,
                                 "prompt_tokens_details": {"cached_tokens": 5}}
    for stop_reason, finish in [("end_turn", "stop"), ("stop_sequence", "stop"),
                                ("max_tokens", "length")]:
        choice, _ = parse_message({"content": [{"type": "text", "text": "a"}],
                                   "stop_reason": stop_reason, "usage": {}})
        assert choice.finish_reason == finish and choice.text == "a"


def test_stream_translation_keeps_usage_from_start_and_delta() -> None:
    events = [
        {"type": "message_start", "message": {"usage": {"input_tokens": 12,
                                                         "output_tokens": 1}}},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text",
                                                                       "text": ""}},
        {"type": "ping"},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta",
                                                              "text": "Hel"}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta",
                                                              "text": "lo"}},
        {"type": "content_block_stop", "index": 0},
        {"type": "content_block_start", "index": 1, "content_block": {
            "type": "tool_use", "id": "toolu_1", "name": "lookup", "input": {}}},
        {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta",
                                                              "partial_json": '{"q": '}},
        {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta",
                                                              "partial_json": '"x"}'}},
        {"type": "content_block_stop", "index": 1},
        {"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": None},
         "usage": {"output_tokens": 9}},
        {"type": "message_stop"},
    ]
    translator = StreamTranslator()
    chunks: list[GenerationChunk] = [c for e in events for c in translator.event(e)]
    assert "".join(c.text for c in chunks) == "Hello"
    calls = [c.extra["tool_calls"][0] for c in chunks if "tool_calls" in c.extra]
    assert calls[0] == {"index": 0, "id": "toolu_1", "type": "function",
                        "function": {"name": "lookup", "arguments": ""}}
    assert "".join(c["function"]["arguments"] for c in calls) == '{"q": "x"}'
    assert [c.finish_reason for c in chunks if c.finish_reason] == ["tool_calls"]
    final = chunks[-1]
    assert final.index is None and final.usage is not None and translator.done
    assert (final.usage.prompt_tokens, final.usage.completion_tokens) == (12, 9)


def test_stream_error_event_maps_to_the_error_hierarchy() -> None:
    translator = StreamTranslator()
    with pytest.raises(ServiceUnavailableError):
        translator.event({"type": "error", "error": {"type": "overloaded_error",
                                                      "message": "Overloaded"}})


# -- end to end: tiergate in front of the fake -------------------------------------------------


@pytest.fixture(scope="module")
def fake_anthropic(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    port = free_port()
    log = tmp_path_factory.mktemp("anthropic") / "fake.log"
    server = start_server([sys.executable, "-m", "gateway.testing.anthropic_upstream",
                           "--port", str(port), "--api-key", API_KEY], port, log,
                          ready_path="/last")
    yield server
    server.stop()


def anthropic_model(fake: ServerProcess, model: str, **extra: Any) -> dict[str, Any]:
    return {"backend": "anthropic", "base_url": fake.url + "/v1", "upstream_model": model,
            "api_key": API_KEY, **extra}


@pytest.fixture(scope="module")
def gateway(gateway_factory: GatewayFactory, fake_anthropic: ServerProcess,
            upstream: ServerProcess, tmp_path_factory: pytest.TempPathFactory) -> ServerProcess:
    sections: dict[str, Any] = {
        f"models.{name}": anthropic_model(fake_anthropic, name, retries=0)
        for name in ["claude-echo", "claude-tools", "claude-overload", "status-429",
                     "status-529", "status-400"]}
    sections["models.wrong-key"] = anthropic_model(fake_anthropic, "claude-echo", retries=0,
                                                   api_key="not-the-key-0123456789")
    # The cascade: the scriptable OpenAI upstream's small tier answers first; a verifier
    # trained to distrust its answers to "hard puzzle" prompts escalates those to Claude.
    base = tmp_path_factory.mktemp("anthropic-cascade")
    (base / "answer.jsonl").write_bytes(b"".join(orjson.dumps(r) + b"\n"
                                                 for r in rows("answer")))
    train_artifact(base / "answer.jsonl", "answer", base / "verifier", target="small-wrong")
    sections["models.small"] = upstream_model(upstream, "echo")
    sections["routes.tiered"] = {"mode": "cascade", "small": "small", "large": "claude-echo",
                                 "verifier": str(base / "verifier"), "threshold": 0.5,
                                 "verifier_sha256": manifest_sha256(base / "verifier")}
    return gateway_factory(sections)


@pytest.fixture
def client(gateway: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0)


def test_chat_through_the_gateway(client: openai.OpenAI, fake_anthropic: ServerProcess) -> None:
    answer = client.chat.completions.create(
        model="claude-echo", max_tokens=50, temperature=0.0,
        messages=[{"role": "system", "content": "sys"}, {"role": "user", "content": "hi there"}])
    assert answer.choices[0].message.content == "echo: hi there"
    assert answer.choices[0].finish_reason == "stop"
    assert answer.usage is not None
    # The fake counts words in, deltas out: "echo: hi there" in deltas of 2 characters.
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (3, 7)
    sent = httpx.get(fake_anthropic.url + "/last").json()
    assert sent["body"]["system"] == "sys" and sent["body"]["max_tokens"] == 50
    assert sent["headers"]["x-api-key"] == API_KEY
    assert sent["headers"]["anthropic-version"] == "2023-06-01"
    limited = client.chat.completions.create(
        model="claude-echo", max_tokens=2, messages=[{"role": "user", "content": "hi there"}])
    assert limited.choices[0].finish_reason == "length"


def test_a_sampled_answer_reports_a_seed_only_where_the_engine_takes_one(
        client: openai.OpenAI) -> None:
    """The gateway draws a seed for every sampled request; Anthropic takes none, so it reports
    none for Claude's answer (a seed there would promise a replay that cannot be made)."""
    ask = {"max_tokens": 20, "temperature": 0.7,
           "messages": [{"role": "user", "content": "hi"}]}
    claude = client.chat.completions.with_raw_response.create(model="claude-echo", **ask)
    assert "x-tiergate-seed" not in claude.headers
    small = client.chat.completions.with_raw_response.create(model="small", **ask)
    assert small.headers["x-tiergate-seed"].isdigit()


def test_streaming_with_usage(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="claude-echo", stream=True, stream_options={"include_usage": True},
        messages=[{"role": "user", "content": "stream me"}])
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "echo: stream me"
    assert [c.choices[0].finish_reason for c in chunks if c.choices
            and c.choices[0].finish_reason] == ["stop"]
    usage = chunks[-1].usage
    # From message_start (2 words in) and message_delta (8 deltas of "echo: stream me").
    assert usage is not None and (usage.prompt_tokens, usage.completion_tokens) == (2, 8)


def test_tool_call_round_trip(client: openai.OpenAI, fake_anthropic: ServerProcess) -> None:
    question: list[Any] = [{"role": "user", "content": "weather"}]
    first = client.chat.completions.create(model="claude-tools", messages=question,
                                           tools=TOOLS)  # type: ignore[arg-type]
    message = first.choices[0].message
    assert first.choices[0].finish_reason == "tool_calls" and message.tool_calls
    call = message.tool_calls[0]
    assert call.function.name == "lookup"  # type: ignore[union-attr]
    assert json.loads(call.function.arguments) == {"q": "weather"}  # type: ignore[union-attr]
    streamed = list(client.chat.completions.create(
        model="claude-tools", messages=question, tools=TOOLS,  # type: ignore[arg-type]
        stream=True))
    deltas = [d for c in streamed if c.choices for d in c.choices[0].delta.tool_calls or []]
    assert deltas[0].id == call.id and deltas[0].function.name == "lookup"  # type: ignore
    assert "".join(d.function.arguments or "" for d in deltas) == \
        call.function.arguments  # type: ignore[union-attr]
    follow_up = [*question, message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": "sunny"}]
    second = client.chat.completions.create(model="claude-tools", messages=follow_up,
                                            tools=TOOLS)  # type: ignore[arg-type]
    assert second.choices[0].message.content == "echo: sunny"
    sent = httpx.get(fake_anthropic.url + "/last").json()["body"]["messages"]
    assert sent[1]["content"][0]["type"] == "tool_use"
    assert sent[2]["content"][0] == {"type": "tool_result", "tool_use_id": call.id,
                                     "content": "sunny"}


@pytest.mark.parametrize(("model", "status", "error_type"), [
    ("status-429", 429, "rate_limit_error"),
    ("status-529", 503, "service_unavailable"),
    ("status-400", 400, "invalid_request_error"),
])
def test_upstream_errors_are_openai_errors(gateway: ServerProcess, model: str, status: int,
                                           error_type: str) -> None:
    resp = httpx.post(gateway.url + "/v1/chat/completions", json={
        "model": model, "messages": [{"role": "user", "content": "hi"}]}, timeout=10)
    assert resp.status_code == status
    assert resp.json()["error"]["type"] == error_type
    if status != 400:
        assert resp.headers["retry-after"] == "3"


def test_overloaded_mid_stream_and_completions_refused(client: openai.OpenAI) -> None:
    with pytest.raises(openai.APIError):
        list(client.chat.completions.create(
            model="claude-overload", stream=True,
            messages=[{"role": "user", "content": "hi"}]))
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model="claude-echo", prompt="hi")
    assert caught.value.body["param"] == "prompt"  # type: ignore[index]


@pytest.mark.parametrize(("level", "escalated", "served_by"), [
    ("easy sum", "false", "small"), ("hard puzzle", "true", "claude-echo")])
def test_cascade_with_an_anthropic_large_tier(gateway: ServerProcess, level: str,
                                              escalated: str, served_by: str) -> None:
    prompt = f"{level} number 1001"
    resp = httpx.post(gateway.url + "/v1/chat/completions", json={
        "model": "tiered", "temperature": 0.5,
        "messages": [{"role": "user", "content": prompt}]}, timeout=30)
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-tiergate-escalated"] == escalated
    assert resp.headers["x-tiergate-model"].startswith(served_by + "@")
    assert resp.json()["choices"][0]["message"]["content"] == f"echo: {prompt}"


def test_the_tuple_says_what_answers(gateway: ServerProcess) -> None:
    card = httpx.get(gateway.url + "/v1/models/claude-echo", timeout=10).json()["tiergate"]
    assert (card["engine"], card["engine_version"], card["upstream_model"]) == \
        ("anthropic", "2023-06-01", "claude-echo")
    assert card["source"].startswith("http://127.0.0.1:") and card["source"].endswith("/v1")
    health = httpx.get(gateway.url + "/health", timeout=10).json()["models"]
    assert health["claude-echo"]["status"] == "ok"  # the identity probe reached the fake
    assert health["wrong-key"]["status"] != "ok"  # refused: never reached


def test_a_refused_key_is_a_502_without_detail(client: openai.OpenAI) -> None:
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model="wrong-key",
                                       messages=[{"role": "user", "content": "hi"}])
    assert caught.value.status_code == 502
    assert "not-the-key" not in caught.value.message
    assert "credentials" in caught.value.message


def test_image_parts_become_image_blocks() -> None:
    content = [{"type": "text", "text": "what is this?"},
               {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0K"}},
               {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}}]
    body = messages_body(chat([{"role": "user", "content": content}]), "claude-x", 10, False)
    assert body["messages"][0]["content"][1:] == [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                     "data": "iVBORw0K"}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}}]


def test_the_api_key_never_shows(gateway: ServerProcess, client: openai.OpenAI) -> None:
    client.chat.completions.create(model="claude-echo",
                                   messages=[{"role": "user", "content": "hi"}])
    seen = [httpx.get(gateway.url + path, timeout=10).text
            for path in ("/health", "/v1/models", "/v1/models/claude-echo")]
    echoed = httpx.post(gateway.url + "/v1/chat/completions", json={  # the upstream repeats it
        "model": "status-400", "messages": [{"role": "user", "content": API_KEY}]})
    assert echoed.status_code == 400 and "fake anthropic error 400" in echoed.text
    seen.append(echoed.text)
    assert not [text for text in seen if API_KEY in text]
    assert API_KEY not in gateway.logs()
