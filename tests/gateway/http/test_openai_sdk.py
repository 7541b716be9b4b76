"""The official openai SDK against a real tiergate process in front of a real upstream."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.conftest import ServerProcess


def client(gateway: ServerProcess, **kwargs: object) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0,
                         **kwargs)  # type: ignore[arg-type]


def aclient(gateway: ServerProcess) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0)


def test_chat_completion(gateway: ServerProcess) -> None:
    raw = client(gateway).chat.completions.with_raw_response.create(
        model="echo", messages=[{"role": "user", "content": "hello there"}])
    completion = raw.parse()
    assert completion.choices[0].message.content == "echo: hello there"
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.model == "echo"
    assert completion.object == "chat.completion"
    assert completion.usage is not None and completion.usage.completion_tokens > 0
    assert completion.usage.total_tokens == (completion.usage.prompt_tokens
                                             + completion.usage.completion_tokens)
    assert raw.headers["x-tiergate-model"].startswith("echo@")
    assert len(raw.headers["x-request-id"]) == 32
    assert completion.id == f"chatcmpl-{raw.headers['x-request-id']}"


def test_chat_streaming_with_usage(gateway: ServerProcess) -> None:
    stream = client(gateway).chat.completions.create(
        model="echo", messages=[{"role": "user", "content": "stream me"}], stream=True,
        stream_options={"include_usage": True})
    chunks = list(stream)
    content_chunks = [c for c in chunks if c.choices]
    assert content_chunks[0].choices[0].delta.role == "assistant"
    assert all(c.choices[0].delta.role is None for c in content_chunks[1:])
    text = "".join(c.choices[0].delta.content or "" for c in content_chunks)
    assert text == "echo: stream me"
    assert content_chunks[-1].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == len(content_chunks)
    assert sum(1 for c in chunks if c.usage is not None) == 1
    assert all(c.object == "chat.completion.chunk" for c in chunks)


def test_streaming_without_usage_has_no_usage_chunk(gateway: ServerProcess) -> None:
    chunks = list(client(gateway).chat.completions.create(
        model="echo", messages=[{"role": "user", "content": "x"}], stream=True))
    assert all(c.usage is None and c.choices for c in chunks)


def test_raw_sse_ends_with_done(gateway: ServerProcess) -> None:
    with httpx.stream("POST", gateway.url + "/v1/chat/completions", json={
            "model": "echo", "stream": True, "messages": [{"role": "user", "content": "x"}]}) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["x-tiergate-model"].startswith("echo@")
        lines = [line for line in r.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    assert all(line.startswith("data: ") for line in lines)


def test_completions_endpoint(gateway: ServerProcess) -> None:
    c = client(gateway)
    completion = c.completions.create(model="echo", prompt="once upon", max_tokens=100)
    assert completion.choices[0].text == "echo: once upon"
    assert completion.object == "text_completion"
    text = "".join(chunk.choices[0].text for chunk in c.completions.create(
        model="echo", prompt="once upon", max_tokens=100, stream=True) if chunk.choices)
    assert text == "echo: once upon"


def test_completions_default_max_tokens_is_16(gateway: ServerProcess) -> None:
    completion = client(gateway).completions.create(
        model="echo", prompt="the quick brown fox jumps over the lazy dog")
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage is not None and completion.usage.completion_tokens == 16


def test_n_choices_and_logprobs(gateway: ServerProcess) -> None:
    completion = client(gateway).chat.completions.create(
        model="echo", messages=[{"role": "user", "content": "hi"}], n=2, logprobs=True,
        top_logprobs=1)
    assert [c.index for c in completion.choices] == [0, 1]
    logprobs = completion.choices[0].logprobs
    assert logprobs is not None and logprobs.content
    assert "".join(t.token for t in logprobs.content) == "echo: hi"
    assert all(t.logprob <= 0 and len(t.top_logprobs) == 1 for t in logprobs.content)


def test_seed_passed_down_and_drawn_when_absent(gateway: ServerProcess, upstream:
                                                ServerProcess) -> None:
    c = client(gateway)
    raw = c.chat.completions.with_raw_response.create(
        model="echo", messages=[{"role": "user", "content": "x"}], seed=1234, temperature=0.7)
    assert raw.headers["x-tiergate-seed"] == "1234"
    assert raw.parse().system_fingerprint == "fp_seed_1234"
    drawn = c.chat.completions.with_raw_response.create(
        model="echo", messages=[{"role": "user", "content": "x"}], temperature=0.7)
    seed = drawn.headers["x-tiergate-seed"]
    assert drawn.parse().system_fingerprint == f"fp_seed_{seed}"
    greedy = c.chat.completions.with_raw_response.create(
        model="echo", messages=[{"role": "user", "content": "x"}], temperature=0)
    assert "x-tiergate-seed" not in greedy.headers
    assert greedy.parse().system_fingerprint == "fp_seed_None"


def test_unknown_and_vllm_fields_reach_the_upstream(gateway: ServerProcess,
                                                   upstream: ServerProcess) -> None:
    client(gateway).chat.completions.create(
        model="echo", messages=[{"role": "user", "content": "x"}], temperature=0.5,
        max_completion_tokens=50, stop=["zzz"], user="u-1",
        extra_body={"top_k": 5, "min_p": 0.1, "repetition_penalty": 1.1,
                    "stop_token_ids": [7], "custom_field": {"a": 1}})
    last = httpx.get(upstream.url + "/last").json()
    body = last["body"]
    assert body["model"] == "echo"
    assert body["temperature"] == 0.5 and body["top_p"] == 1.0
    assert body["max_completion_tokens"] == 50 and "max_tokens" not in body
    assert body["stop"] == ["zzz"]
    assert body["top_k"] == 5 and body["min_p"] == 0.1 and body["repetition_penalty"] == 1.1
    assert body["stop_token_ids"] == [7]
    assert body["custom_field"] == {"a": 1} and body["user"] == "u-1"
    assert isinstance(body["seed"], int)
    headers = {k.lower(): v for k, v in last["headers"].items()}
    assert len(headers["x-request-id"]) == 32


async def test_async_client_chat_and_stream(gateway: ServerProcess) -> None:
    c = aclient(gateway)
    completion = await c.chat.completions.create(
        model="echo", messages=[{"role": "user", "content": "async"}])
    assert completion.choices[0].message.content == "echo: async"
    stream = await c.chat.completions.create(
        model="echo", messages=[{"role": "user", "content": "async"}], stream=True,
        stream_options={"include_usage": True})
    text, usage = "", None
    async for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
        if chunk.usage:
            usage = chunk.usage
    assert text == "echo: async" and usage is not None
    await c.close()


def test_models_list_and_retrieve(gateway: ServerProcess) -> None:
    c = client(gateway)
    ids = [m.id for m in c.models.list().data]
    assert "echo" in ids and "slow" in ids
    card = c.models.retrieve("echo")
    assert card.id == "echo"
    tuple_ = card.model_extra["tiergate"]  # type: ignore[index]
    assert tuple_["engine"] == "openai-compatible"
    assert tuple_["upstream_model"] == "echo"
    assert tuple_["digest"].startswith("sha256:")
    with pytest.raises(openai.NotFoundError):
        c.models.retrieve("nope")


def test_health(gateway: ServerProcess) -> None:
    body = httpx.get(gateway.url + "/health").json()
    assert body["models"]["echo"]["status"] == "ok"
