"""Two real gateway processes sharing a real Redis: one key's rate limit and budget enforced
together across them, revocation and rotation seen by both at once, keys never in a log, and
Redis lost: each key's ``redis_down`` (open: served unmetered; closed: 503)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from gateway.http.auth import hash_key
from tests.conftest import (
    REPO,
    GatewayFactory,
    RedisProcess,
    ServerProcess,
    free_port,
    upstream_model,
    wait_for,
    write_config,
)

ADMIN = "tg-replicas-admin"
ADMIN_AUTH = {"authorization": f"Bearer {ADMIN}"}
CHAT = {"model": "echo", "messages": [{"role": "user", "content": "budget me"}]}
PRICE = {"kind": "tokens", "input_usd_per_mtok": 1_000_000.0,  # a token costs $1
         "output_usd_per_mtok": 1_000_000.0}


def start_pair(gateway_factory: GatewayFactory, upstream: ServerProcess,
               redis_url: str) -> tuple[ServerProcess, ServerProcess]:
    sections: dict[str, dict[str, Any]] = {
        "models.echo": {**upstream_model(upstream, "echo"), "cost": PRICE},
        "auth": {"admin_keys": [{"id": "sre", "sha256": hash_key(ADMIN)}]},
        "keys": {"store": "redis"},
        "telemetry": {"tracing": False},
    }
    env = {"TIERGATE_REDIS_URL": redis_url}
    return gateway_factory(sections, env=env), gateway_factory(sections, env=env)


@pytest.fixture(scope="module")
def shared_redis(redis_server: RedisProcess) -> str:
    url = redis_server.url.removesuffix("/0") + "/3"
    redis.Redis.from_url(url).flushdb()
    return url


@pytest.fixture(scope="module")
def replicas(gateway_factory: GatewayFactory, upstream: ServerProcess,
             shared_redis: str) -> tuple[ServerProcess, ServerProcess]:
    return start_pair(gateway_factory, upstream, shared_redis)


def create(gateway: ServerProcess, key_id: str, **policy: Any) -> str:
    response = httpx.post(gateway.url + "/admin/keys", json={"id": key_id, "policy": policy},
                          headers=ADMIN_AUTH)
    assert response.status_code == 201, response.text
    key: str = response.json()["key"]
    return key


def chat(gateway: ServerProcess, key: str) -> httpx.Response:
    return httpx.post(gateway.url + "/v1/chat/completions", json=CHAT,
                      headers={"authorization": f"Bearer {key}"}, timeout=30)


def spent(gateway: ServerProcess, key_id: str) -> float:
    value: float = httpx.get(f"{gateway.url}/admin/keys/{key_id}",
                             headers=ADMIN_AUTH).json()["spent_today_usd"]
    return value


def test_a_rate_limit_holds_across_replicas(replicas: tuple[ServerProcess, ...]) -> None:
    key = create(replicas[0], "burst", rpm=5)
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda i: chat(replicas[i % 2], key), range(24)))
    statuses = sorted(a.status_code for a in answers)
    assert statuses == [200] * 5 + [429] * 19
    for refused in (a for a in answers if a.status_code == 429):
        assert refused.json()["error"]["code"] == "rate_limit_exceeded"
        assert 1 <= int(refused.headers["retry-after"]) <= 60


def test_a_budget_and_a_limit_hold_together_without_double_spending(
        replicas: tuple[ServerProcess, ...]) -> None:
    cost = chat(replicas[0], create(replicas[0], "probe")).json()["usage"]["total_tokens"]
    budget = 3.5 * cost
    key = create(replicas[1], "team-b", concurrency=2, rpm=1000, daily_budget_usd=budget)

    def client(worker: int) -> list[int]:
        """Requests to alternating replicas until the budget is spent."""
        seen = []
        for i in range(200):
            answer = chat(replicas[(worker + i) % 2], key)
            seen.append(answer.status_code)
            if answer.status_code == 429 and \
                    answer.json()["error"]["code"] == "insufficient_quota":
                return seen
        raise AssertionError("the budget was never spent")

    with ThreadPoolExecutor(4) as pool:
        outcomes = [s for seen in pool.map(client, range(4)) for s in seen]
    served = outcomes.count(200)
    # every answer is charged once, on whichever replica answered it
    wait_for(lambda: spent(replicas[0], "team-b") == served * cost, what="every charge")
    assert spent(replicas[1], "team-b") == served * cost
    # the bound: admissions stop once the spend reaches the budget; at most `concurrency`
    # requests were admitted and not yet charged when it did
    assert budget <= served * cost < budget + 2 * cost
    assert set(outcomes) <= {200, 429}


def test_revoked_and_rotated_keys_are_refused_on_both_replicas(
        replicas: tuple[ServerProcess, ...], shared_redis: str, tmp_path: Path) -> None:
    a, b = replicas
    key = create(a, "leaver")
    assert [chat(g, key).status_code for g in replicas] == [200, 200]
    revoked = httpx.delete(f"{b.url}/admin/keys/leaver", headers=ADMIN_AUTH)
    assert revoked.status_code == 200 and revoked.json()["active"] is False
    assert [chat(g, key).status_code for g in replicas] == [401, 401]

    config = write_config(tmp_path / "cli.toml", {"keys": {"store": "redis"}})

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "gateway", "keys", *args, "--config",
                               str(config)], capture_output=True, text=True, cwd=REPO,
                              timeout=60, env={**os.environ, "TIERGATE_REDIS_URL": shared_redis})

    made = cli("create", "rotor", "--rpm", "100")
    assert made.returncode == 0, made.stderr
    old = made.stdout.split()[1]
    assert [chat(g, old).status_code for g in replicas] == [200, 200]
    rotated = cli("rotate", "rotor")
    new = rotated.stdout.split()[1]
    assert rotated.returncode == 0 and new != old
    assert [chat(g, old).status_code for g in replicas] == [401, 401]
    assert [chat(g, new).status_code for g in replicas] == [200, 200]
    listed = cli("list")
    shown = cli("show", "rotor")
    assert "rotor" in listed.stdout and '"rpm": 100' in shown.stdout
    for text in (listed.stdout, shown.stdout, a.logs(), b.logs()):
        for secret in (key, old, new):
            assert secret not in text and hash_key(secret) not in text
    stored = redis.Redis.from_url(shared_redis)
    dumped = b"".join(k + (stored.dump(k) or b"") for k in stored.keys("*"))
    assert not any(s.encode() in dumped for s in (key, old, new))


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisProcess]:
    server = RedisProcess(free_port(), tmp_path / "redis")
    server.directory.mkdir()
    server.start()
    yield server
    if server.process is not None:
        server.process.send_signal(signal.SIGCONT)  # a test that failed while it was frozen
    server.stop()


def test_redis_unreachable_fails_open_or_closed_per_key(
        gateway_factory: GatewayFactory, upstream: ServerProcess,
        own_redis: RedisProcess) -> None:
    """Redis frozen (SIGSTOP): every call times out (``keys.redis_timeout_s``); thawed, the
    keys it holds serve again."""
    pair = start_pair(gateway_factory, upstream, own_redis.url)
    open_key = create(pair[0], "lenient", rpm=100, redis_down="open")
    closed_key = create(pair[0], "strict", rpm=100, redis_down="closed")
    for gateway in pair:  # each replica has seen both keys
        assert chat(gateway, open_key).status_code == 200
        assert chat(gateway, closed_key).status_code == 200
    assert own_redis.process is not None
    own_redis.process.send_signal(signal.SIGSTOP)  # Redis frozen: every call times out
    for gateway in pair:
        assert chat(gateway, open_key).status_code == 200  # served, unmetered
        refused = chat(gateway, closed_key)
        assert refused.status_code == 503, refused.text
        assert refused.json()["error"]["type"] == "service_unavailable"
        assert refused.json()["error"]["code"] == "keys_unavailable"  # the store's lookup
        assert refused.headers["retry-after"] == "5"
    own_redis.process.send_signal(signal.SIGCONT)
    for gateway in pair:
        wait_for(lambda g=gateway: chat(g, closed_key).status_code == 200,
                 what="the closed key served again once Redis is back")


def test_a_sequential_client_never_meets_its_own_slot(
        replicas: tuple[ServerProcess, ...]) -> None:
    """A slot frees with its answer (a whole answer's before it is written, a stream's after its
    last event, before the response ends), on either replica: a client that waits for each
    answer before the next request is never refused by ``concurrency = 1``."""
    key = create(replicas[0], "one-at-a-time", concurrency=1)
    client = httpx.Client(headers={"authorization": f"Bearer {key}"}, timeout=30)
    for i in range(12):
        url = replicas[i % 2].url + "/v1/chat/completions"
        if i % 3 == 0:
            with client.stream("POST", url, json={**CHAT, "stream": True}) as stream:
                assert stream.status_code == 200
                assert stream.read().endswith(b"data: [DONE]\n\n")
        else:
            assert client.post(url, json=CHAT).status_code == 200
