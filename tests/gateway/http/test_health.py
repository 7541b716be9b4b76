"""Honest health: ``/livez`` (the process serves), ``/readyz`` and ``/health`` (503 when the
gateway cannot serve, saying why), upstream details for admin-key holders only — in-process,
through the front door."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web

from gateway.backends import http as http_backend
from gateway.http.app import create_app
from gateway.http.auth import hash_key
from gateway.settings import Settings
from gateway.testing.upstream import FakeUpstream
from tests.conftest import ServerProcess, upstream_model

ADMIN = "tg-admin-health-test"
ADMIN_HEADERS = {"authorization": f"Bearer {ADMIN}"}


@pytest.fixture(scope="module")
def dead_port() -> Iterator[int]:
    """A loopback port bound but not listening: connections to it are refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


def settings(tmp_path: Path, models: dict[str, Any], **extra: Any) -> Settings:
    return Settings.model_validate({
        "models": models, "records": {"sink": "none"}, "telemetry": {"tracing": False},
        "canary": {"dir": str(tmp_path / "canary")},
        "auth": {"admin_keys": [{"id": "sre", "sha256": hash_key(ADMIN)}]}, **extra})


def down(port: int) -> dict[str, Any]:
    return {"backend": "http", "base_url": f"http://u:pw-health@127.0.0.1:{port}/v1",
            "upstream_model": "x", "connect_timeout_s": 1.0}


@asynccontextmanager
async def gateway(config: Settings) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(config)
    async with app.lifespan(), httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://gateway") as http:
        yield http


async def test_a_serving_gateway_is_live_and_ready(upstream: ServerProcess,
                                                   tmp_path: Path) -> None:
    async with gateway(settings(tmp_path, {"echo": upstream_model(upstream, "echo")})) as http:
        assert (await http.get("/livez")).json() == {"status": "ok"}
        ready = await http.get("/readyz")
        assert ready.status_code == 200 and ready.json() == {"status": "ready", "reasons": []}
        health = await http.get("/health")
        assert health.status_code == 200
        assert health.json()["status"] == "ok" and health.json()["ready"] is True
        assert health.json()["models"]["echo"]["status"] == "ok"


async def test_upstream_details_are_for_admins_only(upstream: ServerProcess, tmp_path: Path,
                                                    dead_port: int) -> None:
    models = {"echo": upstream_model(upstream, "echo"), "down": down(dead_port)}
    async with gateway(settings(tmp_path, models)) as http:
        public = await http.get("/health")
        assert public.status_code == 200  # one model serves: degraded, still ready
        assert public.json()["status"] == "degraded"
        assert upstream.url not in public.text and str(dead_port) not in public.text
        assert set(public.json()["models"]["down"]) <= {
            "status", "reachable", "circuit", "in_flight", "max_in_flight"}
        for wrong in ("Bearer not-the-admin-key", "Basic x"):  # a wrong key: the public view
            assert (await http.get("/health", headers={"authorization": wrong})).json() \
                == public.json()
        detailed = (await http.get("/health", headers=ADMIN_HEADERS)).json()["models"]
        assert detailed["echo"]["upstream"] == upstream.url + "/v1"
        assert detailed["down"]["upstream"] == f"http://u:***@127.0.0.1:{dead_port}/v1"
        assert "cannot connect" in detailed["down"]["error"]
        assert "pw-health" not in (await http.get("/health", headers=ADMIN_HEADERS)).text
        assert "models" not in (await http.get("/readyz")).json()
        assert "down" in (await http.get("/readyz", headers=ADMIN_HEADERS)).json()["models"]


async def test_a_model_unreachable_since_start_is_not_ok_and_the_gateway_not_ready(
        tmp_path: Path, dead_port: int) -> None:
    async with gateway(settings(tmp_path, {"down": down(dead_port)})) as http:
        assert (await http.get("/livez")).status_code == 200  # the process itself serves
        ready = await http.get("/readyz")
        assert ready.status_code == 503
        assert ready.json() == {"status": "unavailable", "reasons": ["no model is reachable"]}
        health = await http.get("/health")
        assert health.status_code == 503
        body = health.json()
        assert body["status"] == "unavailable" and body["ready"] is False
        assert body["models"]["down"]["status"] == "unreachable"
        assert body["models"]["down"]["reachable"] is False


async def test_every_circuit_open_is_not_ready(upstream: ServerProcess, tmp_path: Path) -> None:
    config = settings(tmp_path, {"echo": {**upstream_model(upstream, "echo"),
                                          "breaker_failures": 1, "breaker_reset_s": 60}})
    app = create_app(config)
    async with app.lifespan(), httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://gateway") as http:
        assert (await http.get("/readyz")).status_code == 200
        app.gateway.registry.backends["echo"].breaker.record_failure()  # as a failed call does
        ready = await http.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["reasons"] == ["every model's circuit breaker is open"]
        assert (await http.get("/health")).json()["models"]["echo"]["circuit"] == "open"


async def test_a_record_spool_over_its_limit_is_not_ready(
        upstream: ServerProcess, tmp_path: Path, dead_port: int) -> None:
    records = {"sink": "redis", "redis_url": f"redis://:pw-records@127.0.0.1:{dead_port}/0",
               "spool_dir": str(tmp_path / "spool"), "spool_max_bytes": 65536}
    config = settings(tmp_path, {"echo": upstream_model(upstream, "echo")}, records=records)
    body = {"model": "echo", "max_tokens": 4,
            "messages": [{"role": "user", "content": "y" * 20_000}]}
    async with gateway(config) as http:
        assert (await http.get("/readyz")).status_code == 200
        for _ in range(10):  # the store is down: what is answered stays in the spool
            if (await http.post("/v1/chat/completions", json=body)).status_code == 503:
                break
        ready = await http.get("/readyz")
        assert ready.status_code == 503
        [reason] = ready.json()["reasons"]
        assert "record store" in reason and "behind" in reason
        assert (await http.get("/health")).status_code == 503
        for _ in range(100):  # the delivery process reports the store's error
            admin = (await http.get("/readyz", headers=ADMIN_HEADERS)).json()["records"]
            if admin["store_error"] is not None:
                break
            await asyncio.sleep(0.05)
        assert admin["backlog_bytes"] > 65536
        assert "redis://:***@127.0.0.1" in admin["store_error"]
        assert "pw-records" not in (await http.get("/readyz", headers=ADMIN_HEADERS)).text


async def test_an_upstream_that_comes_up_later_becomes_ok(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http_backend, "PROBE_EVERY_S", 0.0)
    with socket.socket() as sock:  # a free port, nothing listening yet
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    model = {"backend": "http", "base_url": f"http://127.0.0.1:{port}/v1",
             "upstream_model": "echo", "connect_timeout_s": 1.0}
    app = create_app(settings(tmp_path, {"late": model}))
    async with app.lifespan(), httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://gateway") as http:
        assert (await http.get("/readyz")).status_code == 503
        runner = web.AppRunner(FakeUpstream().app())
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        try:
            for _ in range(100):  # the health check asks it again, in the background
                ready = await http.get("/readyz")
                if ready.status_code == 200:
                    break
                await asyncio.sleep(0.05)
            assert ready.status_code == 200, ready.text
            assert (await http.get("/health")).json()["models"]["late"]["status"] == "ok"
        finally:
            await runner.cleanup()
