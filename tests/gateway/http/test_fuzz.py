"""Property-based fuzzing of the OpenAI surface: malformed input is always a 4xx OpenAI error.

Hypothesis builds requests from the schema the gateway serves at ``/openapi.json`` (each field of
``ChatCompletionRequest`` / ``CompletionRequest``), then breaks them: wrong types, out-of-range
numbers, missing required fields, unknown fields, deep nesting, odd unicode, raw bytes. Over
5,000 requests go to a real gateway; none may be answered 5xx, and every 4xx must be OpenAI's
error object.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import ServerProcess

REQUESTS_PER_RUN = 5000

json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=30),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=12,
)


@pytest.fixture(scope="module")
def http(gateway: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway.url, timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
def schema(http: httpx.Client) -> dict[str, Any]:
    document: dict[str, Any] = http.get("/openapi.json").json()
    return document


class Tally:
    """Requests one test sent, and how many were refused (each test counts its own)."""

    def __init__(self) -> None:
        self.sent = self.refused = 0


def check(tally: Tally, response: httpx.Response) -> None:
    tally.sent += 1
    assert response.status_code < 500, (response.status_code, response.text)
    if response.status_code >= 400:
        tally.refused += 1
        assert response.headers["content-type"] == "application/json"
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert isinstance(error["message"], str) and error["message"]


VALID = {
    "/v1/chat/completions": {"model": "echo", "max_tokens": 5,
                             "messages": [{"role": "user", "content": "hi"}]},
    "/v1/completions": {"model": "echo", "prompt": "hi", "max_tokens": 5},
}


BATCH = 5
"""Mutations per example and path: fewer, larger examples keep hypothesis's own cost down."""


def test_mutated_requests_never_5xx(http: httpx.Client, schema: dict[str, Any]) -> None:
    tally = Tally()

    @given(data=st.data())
    @settings(max_examples=REQUESTS_PER_RUN // (2 * BATCH), deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow])
    def mutate(data: st.DataObject) -> None:
        send_mutations(http, schema, data, tally)

    mutate()
    assert tally.sent >= REQUESTS_PER_RUN, vars(tally)
    assert tally.refused >= REQUESTS_PER_RUN // 2, vars(tally)  # mostly malformed, as intended


def send_mutations(http: httpx.Client, schema: dict[str, Any], data: st.DataObject,
                   tally: Tally) -> None:
    for path, valid in VALID.items():
        name = "ChatCompletionRequest" if "chat" in path else "CompletionRequest"
        fields = sorted(schema["components"]["schemas"][name]["properties"])
        for _ in range(BATCH):
            body: dict[str, Any] = dict(valid)
            for field in data.draw(st.lists(st.sampled_from(fields), max_size=4, unique=True)):
                body[field] = data.draw(json_values)
            for field in data.draw(st.lists(st.sampled_from(sorted(valid)), max_size=1)):
                body.pop(field, None)
            if data.draw(st.booleans()):
                body[data.draw(st.text(min_size=1, max_size=10))] = data.draw(json_values)
            if body.get("stream") in (True, 1):
                body["stream"] = False  # streamed answers are covered elsewhere; keep this fast
            check(tally, http.post(path, json=body))


def test_raw_bodies_never_5xx(http: httpx.Client) -> None:
    tally = Tally()

    @given(raw=st.one_of(st.binary(max_size=200), json_values.map(lambda v: repr(v).encode())),
           path=st.sampled_from(sorted(VALID)))
    @settings(max_examples=300, deadline=None, derandomize=True)
    def send(raw: bytes, path: str) -> None:
        check(tally, http.post(path, content=raw, headers={"content-type": "application/json"}))

    send()
    assert tally.sent >= 250 and tally.refused == tally.sent, vars(tally)  # none is valid
