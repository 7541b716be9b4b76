"""The front door in-process: one stack for request ids, routing, 404/405, auth, body limits and
OpenAI-shaped errors on every path (through ``httpx.ASGITransport``, no server)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from gateway.http.app import create_app
from gateway.http.auth import hash_key
from gateway.http.exchange import Call, Reply, json_reply
from gateway.http.frontdoor import Endpoint, FrontDoor, RouteTable, mount
from gateway.http.state import GatewayState
from gateway.kernel.errors import NotFoundError
from gateway.settings import Settings
from tests.conftest import ServerProcess, upstream_model

CLIENT, ADMIN = "tg-client-key", "tg-admin-key"


def settings_for(upstream: ServerProcess, tmp_path: Path, **extra: object) -> Settings:
    return Settings.model_validate({
        "models": {"echo": upstream_model(upstream, "echo")},
        "records": {"sink": "none"},
        "telemetry": {"tracing": False},
        "canary": {"dir": str(tmp_path / "canary")},
        "server": {"max_body_bytes": 4096},
        **extra,
    })


@pytest.fixture
async def client(upstream: ServerProcess, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings_for(upstream, tmp_path, auth={
        "api_keys": [{"id": "team-a", "sha256": hash_key(CLIENT)}],
        "admin_keys": [{"id": "sre", "sha256": hash_key(ADMIN)}]}))
    async with app.lifespan(), httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://gateway") as http:
        yield http


def assert_openai_error(response: httpx.Response, status: int) -> dict[str, object]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert len(response.headers["x-request-id"]) == 32
    error: dict[str, object] = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


async def test_unknown_path_is_an_openai_404(client: httpx.AsyncClient) -> None:
    error = assert_openai_error(await client.get("/v1/nothing-here"), 404)
    assert "/v1/nothing-here" in str(error["message"])


async def test_wrong_method_is_a_405_with_allow(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/chat/completions")
    error = assert_openai_error(response, 405)
    assert response.headers["allow"] == "POST" and error["code"] == "method_not_allowed"
    response = await client.delete("/admin/canary/echo/run")
    assert_openai_error(response, 405)
    assert response.headers["allow"] == "POST"
    response = await client.put("/admin/canary/echo/pin")
    assert response.headers["allow"] == "DELETE, POST"


async def test_client_routes_need_a_client_key_and_admin_routes_an_admin_key(
        client: httpx.AsyncClient) -> None:
    client_key = {"authorization": f"Bearer {CLIENT}"}
    admin_key = {"authorization": f"Bearer {ADMIN}"}
    assert_openai_error(await client.get("/v1/models"), 401)
    assert (await client.get("/v1/models", headers=client_key)).status_code == 200
    assert_openai_error(await client.get("/admin/canary", headers=client_key), 401)
    assert (await client.get("/admin/canary", headers=admin_key)).status_code == 200
    assert_openai_error(await client.get("/v1/models", headers=admin_key), 401)
    # public: health, metrics and the OpenAPI document
    assert (await client.get("/health")).status_code == 200
    assert (await client.get("/openapi.json")).status_code == 200


async def test_one_body_limit_for_every_route(client: httpx.AsyncClient) -> None:
    big = b"{" + b" " * 5000 + b"}"
    headers = {"authorization": f"Bearer {CLIENT}", "content-type": "application/json"}
    assert_openai_error(await client.post("/v1/chat/completions", content=big,
                                          headers=headers), 413)

    async def chunks() -> AsyncIterator[bytes]:  # no content-length: counted as it arrives
        for _ in range(5):
            yield b" " * 1000

    assert_openai_error(await client.post("/v1/completions", content=chunks(),
                                          headers=headers), 413)
    admin = {"authorization": f"Bearer {ADMIN}"}
    assert_openai_error(await client.post("/admin/canary/echo/ack", content=big,
                                          headers=admin), 413)


async def test_a_completion_through_the_front_door(client: httpx.AsyncClient) -> None:
    headers = {"authorization": f"Bearer {CLIENT}"}
    body = {"model": "echo", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]}
    response = await client.post("/v1/chat/completions", json=body, headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["x-tiergate-model"].startswith("echo@")
    assert len(response.headers["x-request-id"]) == 32
    assert response.json()["choices"][0]["message"]["role"] == "assistant"
    async with client.stream("POST", "/v1/chat/completions", headers=headers,
                             json={**body, "stream": True}) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        events = [line async for line in stream.aiter_lines() if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]" and len(events) >= 2


async def test_a_failing_route_is_an_openai_500_without_a_traceback(
        upstream: ServerProcess, tmp_path: Path) -> None:
    async def broken(call: Call) -> Reply:
        raise RuntimeError("secret internals at /srv/app.py line 12")

    async def missing(call: Call) -> Reply:
        raise NotFoundError(f"no such thing {call.path_params['name']}")

    state = GatewayState.build(settings_for(upstream, tmp_path))
    app = FrontDoor(state, RouteTable([Endpoint("/broken", "GET", broken, "public"),
                                       Endpoint("/things/{name}", "GET", missing, "public")]))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://gateway") as http:
        response = await http.get("/broken")
        error = assert_openai_error(response, 500)
        assert "secret" not in response.text and "Traceback" not in response.text
        assert error["type"] == "internal_error"
        error = assert_openai_error(await http.get("/things/lamp"), 404)
        assert error["message"] == "no such thing lamp"


def test_route_table_matches_static_and_parameter_paths() -> None:
    async def handler(call: Call) -> Reply:
        return json_reply({})

    table = RouteTable([
        Endpoint("/v1/models", "GET", handler),
        Endpoint("/v1/models/{model:path}", "GET", handler),
        *mount("/admin", [Endpoint("/routes/{route}/threshold", "PUT", handler)], "admin"),
    ])
    assert table.match("GET", "/v1/models/org/model-7b")[1] == {"model": "org/model-7b"}
    endpoint, params = table.match("PUT", "/admin/routes/auto/threshold")
    assert params == {"route": "auto"} and endpoint.access == "admin"
    assert table.match("HEAD", "/v1/models")[0].method == "GET"
    with pytest.raises(NotFoundError):
        table.match("PUT", "/admin/routes/a/b/threshold")  # {route} is one segment
    with pytest.raises(ValueError, match="two routes"):
        RouteTable([Endpoint("/x", "GET", handler), Endpoint("/x", "GET", handler)])


async def test_the_server_lifespan_freezes_the_started_heap(upstream: ServerProcess,
                                                            tmp_path: Path) -> None:
    """The ASGI lifespan (the server's) moves what the started gateway holds out of the cyclic
    collector's reach, and hands it back at shutdown; the lifespan of tests and embedders does
    not."""
    import asyncio
    import gc

    app = create_app(settings_for(upstream, tmp_path))
    async with app.lifespan():
        assert gc.get_freeze_count() == 0
    inbox: asyncio.Queue[dict[str, str]] = asyncio.Queue()
    outbox: asyncio.Queue[dict[str, str]] = asyncio.Queue()
    await inbox.put({"type": "lifespan.startup"})
    task = asyncio.create_task(app({"type": "lifespan", "asgi": {"version": "3.0"}},
                                   inbox.get, outbox.put))
    assert (await outbox.get())["type"] == "lifespan.startup.complete"
    await asyncio.sleep(0)  # the lifespan freezes right after saying it has started
    assert gc.get_freeze_count() > 10_000
    await inbox.put({"type": "lifespan.shutdown"})
    assert (await outbox.get())["type"] == "lifespan.shutdown.complete"
    await task
    assert gc.get_freeze_count() == 0


async def test_a_streams_key_slot_is_free_before_its_end_reaches_the_client(
        upstream: ServerProcess, tmp_path: Path) -> None:
    """A client that reads a stream to its end and sends the next request at once (to any
    replica) never meets its own ``concurrency = 1`` slot: the slot is settled after the last
    event and before the message that ends the response."""
    app = create_app(settings_for(upstream, tmp_path, auth={"api_keys": [
        {"id": "one", "sha256": hash_key(CLIENT), "policy": {"concurrency": 1}}]}))
    said: list[str] = []
    keys = app.gateway.keys
    settle = keys.release

    async def release(ticket: object) -> None:
        said.append("release")
        await settle(ticket)  # type: ignore[arg-type]

    keys.release = release  # type: ignore[method-assign]

    async def recording(scope: dict[str, object], receive: object, send: object) -> None:
        async def send_and_note(message: dict[str, object]) -> None:
            if message["type"] == "http.response.body":
                said.append("more" if message.get("more_body") else "end")
            await send(message)  # type: ignore[operator]

        await app(scope, receive, send_and_note)  # type: ignore[arg-type]

    async with app.lifespan(), httpx.AsyncClient(
            transport=httpx.ASGITransport(app=recording), base_url="http://gateway") as http:
        body = {"model": "echo", "stream": True,
                "messages": [{"role": "user", "content": "hello"}]}
        for _ in range(2):
            said.clear()
            async with http.stream("POST", "/v1/chat/completions", json=body,
                                   headers={"authorization": f"Bearer {CLIENT}"}) as answer:
                assert answer.status_code == 200
                assert (await answer.aread()).endswith(b"data: [DONE]\n\n")
            assert said[-2:] == ["release", "end"] and said.count("release") == 1
