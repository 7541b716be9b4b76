"""Every failure reaches the client as an OpenAI error with the right status, never a traceback."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest

from gateway.http.auth import hash_key
from tests.conftest import GatewayFactory, ServerProcess, upstream_model
from tests.gateway.http.test_openai_sdk import client

CHAT = {"messages": [{"role": "user", "content": "hi"}]}


def post(gateway: ServerProcess, body: Any, path: str = "/v1/chat/completions",
         **kwargs: Any) -> httpx.Response:
    if isinstance(body, bytes | str):
        return httpx.post(gateway.url + path, content=body, timeout=10, **kwargs)
    return httpx.post(gateway.url + path, json=body, timeout=10, **kwargs)


def assert_openai_error(response: httpx.Response, status: int, error_type: str | None = None,
                        param: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert len(response.headers["x-request-id"]) == 32
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"] and "Traceback" not in error["message"]
    if error_type is not None:
        assert error["type"] == error_type
    if param is not None:
        assert error["param"] == param
    return dict(error)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "echo"}, "messages"),
        ({"model": "echo", "messages": []}, "messages"),
        ({"model": "echo", "messages": [{"role": "wizard", "content": "x"}]}, "messages.0.role"),
        ({"model": "echo", **CHAT, "temperature": 3}, "temperature"),
        ({"model": "echo", **CHAT, "top_p": 0}, "top_p"),
        ({"model": "echo", **CHAT, "n": 0}, "n"),
        ({"model": "echo", **CHAT, "max_tokens": -1}, "max_tokens"),
        ({"model": "echo", **CHAT, "top_logprobs": 3}, None),
        ({"model": "echo", **CHAT, "stream_options": {"include_usage": True}}, None),
        ({"model": "echo", **CHAT, "stop": ["ok", ""]}, None),
        ({"model": "", **CHAT}, "model"),
        ({"model": 5, **CHAT}, "model"),
        ({"model": "echo", **CHAT, "seed": "abc"}, "seed"),
    ],
)
def test_invalid_chat_requests_are_400(gateway: ServerProcess, body: dict[str, Any],
                                       param: str | None) -> None:
    assert_openai_error(post(gateway, body), 400, "invalid_request_error", param)


@pytest.mark.parametrize("raw", [b"{not json", b"[1, 2]", b"", b"\xff\xfe", b"null", b'"text"'])
def test_malformed_bodies_are_400(gateway: ServerProcess, raw: bytes) -> None:
    assert_openai_error(post(gateway, raw), 400, "invalid_request_error")


def test_invalid_completion_request(gateway: ServerProcess) -> None:
    assert_openai_error(post(gateway, {"model": "echo", "prompt": []}, "/v1/completions"),
                        400, param="prompt")
    assert_openai_error(post(gateway, {"model": "echo", "prompt": "x", "logprobs": 50},
                             "/v1/completions"), 400, param="logprobs")


def test_sdk_raises_its_own_types(gateway: ServerProcess) -> None:
    c = client(gateway)
    with pytest.raises(openai.BadRequestError) as bad:
        c.chat.completions.create(model="echo", messages=[{"role": "user", "content": "x"}],
                                  temperature=5)
    assert bad.value.param == "temperature"
    with pytest.raises(openai.NotFoundError) as missing:
        c.chat.completions.create(model="no-such-model",
                                  messages=[{"role": "user", "content": "x"}])
    assert missing.value.code == "model_not_found"
    assert "no-such-model" in missing.value.message


def test_unknown_path_and_method(gateway: ServerProcess) -> None:
    assert_openai_error(httpx.get(gateway.url + "/v1/nothing"), 404)
    assert_openai_error(httpx.get(gateway.url + "/v1/chat/completions"), 405)


def test_body_too_large_is_413(gateway: ServerProcess) -> None:
    big = {"model": "echo", "messages": [{"role": "user", "content": "x" * 70_000}]}
    assert_openai_error(post(gateway, big), 413, "invalid_request_error")


def test_body_too_large_without_content_length_is_413(gateway: ServerProcess) -> None:
    def chunks() -> Any:
        for _ in range(20):
            yield b"x" * 8192

    response = httpx.post(gateway.url + "/v1/chat/completions", content=chunks(), timeout=10)
    assert_openai_error(response, 413)


@pytest.mark.parametrize(
    ("model", "status", "error_type", "sdk_error"),
    [
        ("status-400", 400, "invalid_request_error", openai.BadRequestError),
        ("status-429", 429, "rate_limit_error", openai.RateLimitError),
        ("status-500", 502, "upstream_error", openai.InternalServerError),
        ("status-503", 503, "service_unavailable", openai.InternalServerError),
        ("garbage", 502, "upstream_error", openai.InternalServerError),
        ("html", 502, "upstream_error", openai.InternalServerError),
        ("slow", 504, "timeout_error", openai.InternalServerError),
        ("refused", 503, "service_unavailable", openai.InternalServerError),
    ],
)
def test_upstream_failures_are_mapped(gateway: ServerProcess, model: str, status: int,
                                      error_type: str, sdk_error: type[Exception]) -> None:
    error = assert_openai_error(post(gateway, {"model": model, **CHAT}), status, error_type)
    if model == "status-400":
        assert error["message"] == "fake upstream error 400"
    with pytest.raises(sdk_error):
        client(gateway).chat.completions.create(model=model, **CHAT)  # type: ignore[arg-type]


@pytest.mark.parametrize("model", ["status-429", "status-503", "refused"])
def test_retryable_failures_carry_retry_after(gateway: ServerProcess, model: str) -> None:
    response = post(gateway, {"model": model, **CHAT})
    assert int(response.headers["retry-after"]) >= 1


@pytest.mark.parametrize("model", ["status-500", "garbage", "refused", "slow"])
def test_failure_before_first_chunk_is_an_http_error(gateway: ServerProcess, model: str) -> None:
    response = post(gateway, {"model": model, **CHAT, "stream": True})
    assert response.status_code >= 500
    assert response.json()["error"]["message"]


@pytest.mark.parametrize("model", ["cut", "stream-error"])
def test_failure_mid_stream_is_an_error_event(gateway: ServerProcess, model: str) -> None:
    with httpx.stream("POST", gateway.url + "/v1/chat/completions", timeout=10,
                      json={"model": model, **CHAT, "stream": True,
                            "stream_options": {"include_usage": True}}) as response:
        assert response.status_code == 200
        events = [line for line in response.iter_lines() if line]
    assert "data: [DONE]" not in events
    last = httpx.Response(200, content=events[-1].removeprefix("data: ")).json()
    assert set(last["error"]) == {"message", "type", "param", "code"}
    assert last["error"]["type"] == "upstream_error"
    # Content that arrived before the failure was delivered; no usage chunk pretends success.
    assert len(events) == 4 and '"usage"' not in "".join(events)
    with pytest.raises(openai.APIError):
        for _ in client(gateway).chat.completions.create(model=model, stream=True,
                                                         **CHAT):  # type: ignore[arg-type]
            pass


@pytest.fixture(scope="module")
def keyed_gateway(gateway_factory: GatewayFactory, upstream: ServerProcess) -> ServerProcess:
    return gateway_factory({
        "auth": {"api_keys": [{"id": "team-a", "sha256": hash_key("sk-good")}]},
        "models.echo": upstream_model(upstream, "echo"),
    })


def test_api_keys(keyed_gateway: ServerProcess) -> None:
    ok = openai.OpenAI(base_url=keyed_gateway.url + "/v1", api_key="sk-good", max_retries=0)
    assert ok.chat.completions.create(model="echo", **CHAT).choices  # type: ignore[arg-type]
    bad = openai.OpenAI(base_url=keyed_gateway.url + "/v1", api_key="sk-bad", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.chat.completions.create(model="echo", **CHAT)  # type: ignore[arg-type]
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()
    missing = httpx.post(keyed_gateway.url + "/v1/chat/completions", json={"model": "echo", **CHAT})
    assert_openai_error(missing, 401, "authentication_error")
    assert httpx.get(keyed_gateway.url + "/health").status_code == 200


@pytest.mark.parametrize("body", [
    {"model": "echo", **CHAT, "custom": {"deep": [1, 2**70]}},
    {"model": "echo", "messages": [{"role": "user", "content": "x", "meta": 2**64}]},
    {"model": "echo", **CHAT, "max_tokens": 2**40},
    {"model": "echo", **CHAT, "stop_token_ids": [2**63]},
    # a field tiergate declares and passes through (found by tests/gateway/http/test_fuzz.py)
    {"model": "echo", **CHAT, "response_format": {"": -(2**63) - 1}},
])
def test_integers_beyond_64_bits_are_400(gateway: ServerProcess, body: dict[str, Any]) -> None:
    assert_openai_error(post(gateway, body), 400, "invalid_request_error")
