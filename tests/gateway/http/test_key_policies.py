"""Client keys and their policies at the front door, in-process: keys made through
``/admin/keys`` (SQLite store), static keys with policies, 403s for paths and models a key may
not use, OpenAI-shaped 429s the official SDK reads, rotation and revocation, and a key that
never shows in the store, the logs or an answer after the one that made it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from gateway.http.app import create_app
from gateway.http.auth import hash_key
from gateway.http.frontdoor import FrontDoor
from gateway.settings import Settings
from tests.conftest import ServerProcess, upstream_model

ADMIN, STATIC = "tg-admin-key", "tg-static-key"
ADMIN_AUTH = {"authorization": f"Bearer {ADMIN}"}
CHAT = {"model": "echo", "messages": [{"role": "user", "content": "hello there"}]}
PRICE = {"kind": "tokens", "input_usd_per_mtok": 100_000.0, "output_usd_per_mtok": 100_000.0}


def keyed_settings(upstream: ServerProcess, tmp_path: Path, **keys: Any) -> Settings:
    return Settings.model_validate({
        "models": {"echo": {**upstream_model(upstream, "echo"), "cost": PRICE},
                   "other": {**upstream_model(upstream, "echo"), "cost": PRICE}},
        "records": {"sink": "none"},
        "telemetry": {"tracing": False},
        "canary": {"dir": str(tmp_path / "canary")},
        "auth": {"admin_keys": [{"id": "sre", "sha256": hash_key(ADMIN)}],
                 "api_keys": [{"id": "static", "sha256": hash_key(STATIC),
                               "policy": {"rpm": 2, "models": ["echo"]}}]},
        "keys": {"store": "sqlite", "sqlite_path": str(tmp_path / "keys" / "keys.sqlite3"),
                 **keys},
    })


@pytest.fixture
async def app(upstream: ServerProcess, tmp_path: Path) -> AsyncIterator[FrontDoor]:
    made = create_app(keyed_settings(upstream, tmp_path))
    async with made.lifespan():
        yield made


@pytest.fixture
async def http(app: FrontDoor) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://gateway") as client:
        yield client


def sdk(http: httpx.AsyncClient, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url="http://gateway/v1", api_key=key, max_retries=0,
                              http_client=http)


async def create(http: httpx.AsyncClient, key_id: str, **policy: Any) -> str:
    response = await http.post("/admin/keys", json={"id": key_id, "policy": policy},
                               headers=ADMIN_AUTH)
    assert response.status_code == 201, response.text
    assert response.headers["cache-control"] == "no-store"
    key: str = response.json()["key"]
    return key


def chat(key: str, **body: Any) -> tuple[dict[str, Any], dict[str, str]]:
    return {**CHAT, **body}, {"authorization": f"Bearer {key}"}


async def post_chat(http: httpx.AsyncClient, key: str, **body: Any) -> httpx.Response:
    payload, headers = chat(key, **body)
    return await http.post("/v1/chat/completions", json=payload, headers=headers)


async def test_a_created_key_serves_and_is_never_shown_again(
        http: httpx.AsyncClient, caplog: pytest.LogCaptureFixture,
        tmp_path: Path) -> None:
    caplog.set_level(logging.DEBUG)
    key = await create(http, "team-a", rpm=100)
    assert (await post_chat(http, key)).status_code == 200
    assert (await post_chat(http, key + "x")).status_code == 401
    listed = await http.get("/admin/keys", headers=ADMIN_AUTH)
    shown = await http.get("/admin/keys/team-a", headers=ADMIN_AUTH)
    assert [k["id"] for k in listed.json()["data"]] == ["team-a"]
    assert shown.json()["policy"] == {"rpm": 100, "redis_down": "closed"}
    for text in (listed.text, shown.text, caplog.text):
        assert key not in text and hash_key(key) not in text
    assert key.encode() not in (tmp_path / "keys" / "keys.sqlite3").read_bytes()


async def test_rotation_and_revocation(http: httpx.AsyncClient) -> None:
    old = await create(http, "team-a")
    rotated = await http.post("/admin/keys/team-a/rotate", headers=ADMIN_AUTH)
    new = rotated.json()["key"]
    assert rotated.status_code == 200 and new != old
    assert rotated.headers["cache-control"] == "no-store"
    refused = await post_chat(http, old)
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "invalid_api_key"
    assert (await post_chat(http, new)).status_code == 200
    revoked = await http.delete("/admin/keys/team-a", headers=ADMIN_AUTH)
    assert revoked.json()["active"] is False
    assert (await post_chat(http, new)).status_code == 401
    with pytest.raises(openai.AuthenticationError):
        await sdk(http, new).chat.completions.create(**CHAT)


async def test_paths_and_models_a_key_may_not_use_are_403(http: httpx.AsyncClient) -> None:
    key = await create(http, "narrow", models=["echo"], routes=["/v1/chat/completions"])
    assert (await post_chat(http, key)).status_code == 200
    model = await post_chat(http, key, model="other")
    assert model.status_code == 403
    assert model.json()["error"] == {
        "message": "This key may not use the model 'other'.", "type": "permission_error",
        "param": "model", "code": "model_not_allowed"}
    path = await http.post("/v1/completions", json={"model": "echo", "prompt": "hi"},
                           headers={"authorization": f"Bearer {key}"})
    assert path.status_code == 403 and path.json()["error"]["code"] == "route_not_allowed"
    with pytest.raises(openai.PermissionDeniedError):
        await sdk(http, key).chat.completions.create(**{**CHAT, "model": "other"})


async def test_a_key_lists_only_the_models_it_may_use(http: httpx.AsyncClient) -> None:
    key = await create(http, "lister", models=["echo"])
    client = sdk(http, key)
    assert [m.id async for m in client.models.list()] == ["echo"]
    assert (await client.models.retrieve("echo")).id == "echo"
    with pytest.raises(openai.NotFoundError):
        await client.models.retrieve("other")  # not the key's: as if it did not exist
    anyone = await create(http, "anyone")
    assert {m.id async for m in sdk(http, anyone).models.list()} == {"echo", "other"}


async def test_requests_per_minute_429_is_openai_shaped(http: httpx.AsyncClient) -> None:
    key = await create(http, "slow", rpm=2)
    assert [(await post_chat(http, key)).status_code for _ in range(2)] == [200, 200]
    refused = await post_chat(http, key)
    assert refused.status_code == 429
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    error = refused.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "rate_limit_error" and error["code"] == "rate_limit_exceeded"
    with pytest.raises(openai.RateLimitError) as raised:
        await sdk(http, key).chat.completions.create(**CHAT)
    assert raised.value.code == "rate_limit_exceeded" and raised.value.status_code == 429
    assert raised.value.response.headers["retry-after"]
    metrics = (await http.get("/metrics")).text
    assert 'tiergate_key_refusals_total{key="slow",code="rate_limit_exceeded"} 2' in metrics


async def test_static_keys_keep_working_with_their_policy(http: httpx.AsyncClient) -> None:
    assert (await post_chat(http, STATIC)).status_code == 200
    assert (await post_chat(http, STATIC, model="other")).status_code == 403
    assert (await post_chat(http, STATIC)).status_code == 200
    assert (await post_chat(http, STATIC)).status_code == 429  # rpm = 2
    clash = await http.post("/admin/keys", json={"id": "static"}, headers=ADMIN_AUTH)
    assert clash.status_code == 409


async def spent_today(http: httpx.AsyncClient, key_id: str) -> float:
    shown = await http.get(f"/admin/keys/{key_id}", headers=ADMIN_AUTH)
    value: float = shown.json()["spent_today_usd"]
    return value


async def test_a_spent_budget_is_insufficient_quota(http: httpx.AsyncClient) -> None:
    # the echo model's price: a token costs $0.1, the echo answer costs over $1
    key = await create(http, "budget", daily_budget_usd=1.0)
    served = await post_chat(http, key)
    usage = served.json()["usage"]
    cost = usage["total_tokens"] * 0.1
    for _ in range(200):  # the charge lands after the answer (a guard, not a timing)
        if await spent_today(http, "budget") > 0:
            break
        await asyncio.sleep(0.02)
    assert await spent_today(http, "budget") == pytest.approx(cost)
    refused = await post_chat(http, key)
    assert refused.status_code == 429
    assert refused.json()["error"]["type"] == "insufficient_quota"
    assert refused.json()["error"]["code"] == "insufficient_quota"
    with pytest.raises(openai.RateLimitError) as raised:
        await sdk(http, key).chat.completions.create(**CHAT)
    assert raised.value.code == "insufficient_quota"


async def test_tokens_are_reconciled_to_the_usage(http: httpx.AsyncClient) -> None:
    long_word = {"messages": [{"role": "user", "content": "a" * 400}]}  # few tokens, many bytes
    payload, _ = chat("", **long_word)
    estimate = (len(httpx.Request("POST", "/", json=payload).content) + 3) // 4
    key = await create(http, "tokens", tpm=2 * estimate - 1)  # two estimates do not fit
    served = await post_chat(http, key, **long_word)
    assert served.status_code == 200
    assert served.json()["usage"]["total_tokens"] + estimate <= 2 * estimate - 1
    for _ in range(200):  # admitted once the first request's entry holds its usage
        second = await post_chat(http, key, **long_word)
        if second.status_code == 200:
            break
        assert second.json()["error"]["code"] == "rate_limit_exceeded"
        await asyncio.sleep(0.02)
    else:
        raise AssertionError("the first request's tokens were never reconciled")


async def test_no_keys_and_no_store_is_an_open_gateway(upstream: ServerProcess,
                                                       tmp_path: Path) -> None:
    settings = keyed_settings(upstream, tmp_path).model_copy(update={
        "auth": Settings().auth, "keys": Settings().keys})
    app = create_app(settings)
    async with app.lifespan(), httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                                 base_url="http://gateway") as client:
        assert (await client.post("/v1/chat/completions", json=CHAT)).status_code == 200
