"""The fleet on one machine, shared by the fleet tests (tests/deploy/test_fleet*.py): three
``tiergate serve`` processes behind a real HAProxy (Debian's package, ``make system-deps``),
sharing a Redis of their own (thresholds, rollbacks, the canary leader lock), one canary store
(a directory on this host) and one PostgreSQL record store, in front of the scriptable upstream.

Each replica also serves ``live``, a model whose upstream is :class:`SwappableUpstream`: a proxy
to the scriptable upstream's ``echo`` that knows which replica asked and can be swapped
silently (same name, other answers), and ``live-pinned``, its pinned version (``echo``
directly). ``live`` is a canary model with rollback to ``live-pinned``."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import orjson
import psycopg
import pytest

from gateway.http.auth import hash_key
from tests.conftest import (
    PostgresServer,
    RedisProcess,
    ServerProcess,
    free_port,
    start_server,
    upstream_model,
    wait_for,
    write_config,
)

REPLICAS = ("g1", "g2", "g3")
SCHEMA = "fleet"
ADMIN_KEY = "tg-fleet-admin"
ADMIN = {"authorization": f"Bearer {ADMIN_KEY}"}
PIN = "ef" * 32
"""The weights digest the replicas declare for ``echo`` (a pinned upstream: records replay)."""
CANARY_PROMPTS = tuple(f"canary item {i}" for i in range(6))

HAPROXY_CONFIG = """\
global
    maxconn 256

defaults
    mode http
    timeout connect 2s
    timeout client 60s
    timeout server 60s
    timeout queue 30s
    retries 3
    retry-on conn-failure empty-response
    option redispatch 1

frontend fleet
    bind 127.0.0.1:{port}
    default_backend gateways

backend gateways
    balance roundrobin
    option httpchk GET /readyz
    http-check expect status 200
    http-response set-header x-fleet-replica %s
{servers}
"""


def haproxy_binary() -> str:
    found = shutil.which("haproxy") or ("/usr/sbin/haproxy"
                                        if Path("/usr/sbin/haproxy").exists() else None)
    if found is None:
        pytest.fail("haproxy is not installed: apt-get install haproxy (make system-deps)")
    return found


class SwappableUpstream:
    """A loopback proxy to the scriptable upstream. Replica ``gN`` reaches it at ``/gN/v1``, so
    every call it forwards is known by replica and prompt (``calls``); while ``swapped`` is set
    it answers ``drift: ...`` where the upstream said ``echo: ...`` (a silent weights swap:
    same model name, same ``/v1/models``)."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.swapped = threading.Event()
        self.calls: list[tuple[str, str]] = []
        """(replica, prompt) of every completion call, in arrival order."""
        self.lock = threading.Lock()
        self.http = httpx.Client(timeout=60)
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                proxy.forward(self)

            def do_POST(self) -> None:
                proxy.forward(self)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def forward(self, handler: BaseHTTPRequestHandler) -> None:
        replica, _, path = handler.path.lstrip("/").partition("/")
        length = int(handler.headers.get("content-length") or 0)
        body = handler.rfile.read(length) if length else None
        if body and path.endswith("completions"):
            request = orjson.loads(body)
            prompt = request.get("prompt") or request.get("messages", [{}])[-1].get("content")
            with self.lock:
                self.calls.append((replica, str(prompt)))
        answer = self.http.request(handler.command, f"{self.target}/{path}", content=body,
                                   headers={"content-type": "application/json"})
        content = answer.content
        if self.swapped.is_set():
            content = content.replace(b"echo: ", b"drift: ")
        handler.send_response(answer.status_code)
        handler.send_header("content-type", answer.headers.get("content-type", "text/plain"))
        handler.send_header("content-length", str(len(content)))
        handler.end_headers()
        handler.wfile.write(content)

    def canary_callers(self, since: int = 0) -> set[str]:
        """The replicas that sent canary items from position ``since`` of ``calls`` on."""
        with self.lock:
            return {replica for replica, prompt in self.calls[since:]
                    if prompt in CANARY_PROMPTS}

    def close(self) -> None:
        self.server.shutdown()
        self.http.close()


@dataclass
class Fleet:
    url: str
    """HAProxy's frontend."""
    directory: Path
    replicas: dict[str, ServerProcess]
    ports: dict[str, int]
    env: dict[str, str]
    config: Path
    postgres: PostgresServer
    haproxy: subprocess.Popen[bytes]
    live: SwappableUpstream
    extra: dict[str, Any] = field(default_factory=dict)

    def command(self, name: str) -> list[str]:
        return [sys.executable, "-m", "gateway", "serve", "--config", str(self.settings(name)),
                "--port", str(self.ports[name])]

    def settings(self, name: str) -> Path:
        """Replica ``name``'s settings file."""
        return self.directory / name / "tiergate.toml"

    def start(self, name: str) -> None:
        """(Re)start a replica on its port and spool, in a process group of its own."""
        self.replicas[name] = start_server(
            self.command(name), self.ports[name], self.directory / name / "gateway.log",
            ready_path="/readyz", env=self.env, new_session=True)

    def kill(self, name: str) -> None:
        """SIGKILL the replica's process group: the gateway and its delivery process."""
        process = self.replicas[name].process
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()

    def running(self) -> dict[str, ServerProcess]:
        return {name: server for name, server in self.replicas.items()
                if server.process.poll() is None}

    def stored_ids(self) -> set[str]:
        with psycopg.connect(self.postgres.url, autocommit=True,
                             options=f"-c search_path={SCHEMA}") as conn:
            return {row[0] for row in conn.execute("SELECT record_id FROM records")}


def metric(server: ServerProcess, name: str) -> dict[str, float]:
    """A metric's samples on a replica's ``/metrics``, by label set (``""``: none)."""
    text = httpx.get(server.url + "/metrics", timeout=30).text
    return {labels: float(value) for labels, value in
            re.findall(rf"^{name}(\{{[^}}]*\}})? (\S+)$", text, re.MULTILINE)}


def replica_config(name: str, upstream: ServerProcess, live: SwappableUpstream,
                   postgres: PostgresServer, redis_url: str, directory: Path) -> Path:
    """One replica's settings: the shared Redis, canary store and record store, a spool of its
    own."""
    replica = directory / name
    replica.mkdir(parents=True)
    path = write_config(replica / "tiergate.toml", {
        "models.echo": upstream_model(upstream, "echo", weights_sha256=PIN),
        "models.live": {"backend": "http", "base_url": f"{live.url}/{name}/v1",
                        "upstream_model": "echo"},
        "models.live-pinned": upstream_model(upstream, "echo"),
        "routes.auto": {"mode": "fixed", "small": "echo", "large": "echo"},
        "auth": {"admin_keys": [{"id": "sre", "sha256": hash_key(ADMIN_KEY)}]},
        "records": {"sink": "postgres", "postgres_url": postgres.url,
                    "postgres_schema": SCHEMA, "spool_dir": str(replica / "spool"),
                    "store_interval_s": 0.2},
        "canary": {"dir": str(directory / "canary"), "interval_s": 1, "refresh_s": 0.5,
                   "leader_ttl_s": 3, "alert_sinks": ["log", "metric"]},
        "canary.models.live": {"pinned": "live-pinned", "rollback": True,
                               "canary_set": str(directory / "canary-set.jsonl")},
        "shadow": {"dir": str(replica / "shadow")},
    })
    # a top-level key comes before the first table
    path.write_text(f'redis_url = "{redis_url}"\n\n' + path.read_text())
    return path


def write_canary_set(path: Path) -> None:
    items = [{"id": f"fleet-{i}", "kind": "completion", "prompt": prompt,
              "answer": f"echo: {prompt}", "grader": {"type": "exact"}, "slice": "echo",
              "max_tokens": 32} for i, prompt in enumerate(CANARY_PROMPTS)]
    path.write_bytes(b"".join(orjson.dumps(item) + b"\n" for item in items))


@pytest.fixture(scope="package")
def fleet(upstream: ServerProcess, postgres_server: PostgresServer,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    haproxy = haproxy_binary()
    directory = tmp_path_factory.mktemp("fleet")
    # a Redis of the fleet's own: no other gateway of the session competes for its leader lock
    redis = RedisProcess(free_port(), directory)
    redis.start()
    live = SwappableUpstream(upstream.url)
    ports = {name: free_port() for name in REPLICAS}
    write_canary_set(directory / "canary-set.jsonl")
    for name in REPLICAS:
        replica_config(name, upstream, live, postgres_server, redis.url, directory)
    env = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    fleet = Fleet("", directory, {}, ports, env, directory / "haproxy.cfg", postgres_server,
                  subprocess.Popen(["true"]), live)
    fleet.haproxy.wait()
    try:
        for name in REPLICAS:
            fleet.start(name)
        port = free_port()
        servers = "\n".join(f"    server {name} 127.0.0.1:{ports[name]} check inter 200ms "
                            "fall 2 rise 1" for name in REPLICAS)
        fleet.config.write_text(HAPROXY_CONFIG.format(port=port, servers=servers))
        log = (directory / "haproxy.log").open("wb")
        fleet.haproxy = subprocess.Popen([haproxy, "-db", "-f", str(fleet.config)],
                                         stdout=log, stderr=subprocess.STDOUT)
        fleet.url = f"http://127.0.0.1:{port}"

        def all_replicas_answer() -> bool:
            if fleet.haproxy.poll() is not None:
                raise RuntimeError((directory / "haproxy.log").read_text())
            seen = set()
            for _ in range(6):
                try:
                    answer = httpx.get(fleet.url + "/readyz", timeout=5)
                except httpx.HTTPError:
                    return False
                seen.add(answer.headers.get("x-fleet-replica"))
            return seen == set(REPLICAS)

        wait_for(all_replicas_answer, timeout=60, what="HAProxy sending to every replica")
        yield fleet
    finally:
        if fleet.haproxy.poll() is None:
            fleet.haproxy.terminate()
            fleet.haproxy.wait(10)
        for server in fleet.replicas.values():
            server.stop()
        live.close()
        redis.stop()
