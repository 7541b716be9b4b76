"""A fleet on one machine: three gateway processes behind a real HAProxy (Debian's package,
``make system-deps``), sharing a Redis (thresholds, rollbacks, the canary leader lock) and one
PostgreSQL record store, in front of the scriptable upstream.

Under load one replica is killed with SIGKILL — its whole process group, the records delivery
process with it — and HAProxy routes around it; the replica is then restarted on the same spool,
delivers what it had spooled, and every request that got a 200 has its decode record in the
shared store, whose chain ``tiergate audit verify`` finds intact. A threshold changed through
one replica's admin API reaches the others through Redis."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import psycopg
import pytest

from gateway.cli.main import main
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
CLIENTS = 3
"""Client threads, each sending chat requests one after the other through HAProxy."""
BEFORE_KILL, AFTER_KILL = 5, 10
"""Answers each client gets before the kill, and after it."""

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
    extra: dict[str, Any] = field(default_factory=dict)

    def command(self, name: str) -> list[str]:
        return [sys.executable, "-m", "gateway", "serve", "--config",
                str(self.directory / name / "tiergate.toml"), "--port", str(self.ports[name])]

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

    def stored_ids(self) -> set[str]:
        with psycopg.connect(self.postgres.url, autocommit=True,
                             options=f"-c search_path={SCHEMA}") as conn:
            return {row[0] for row in conn.execute("SELECT record_id FROM records")}


def replica_config(upstream: ServerProcess, postgres: PostgresServer, redis_url: str,
                   directory: Path) -> Path:
    """One replica's settings: the shared Redis and record store, a spool of its own."""
    directory.mkdir(parents=True)
    path = write_config(directory / "tiergate.toml", {
        "models.echo": upstream_model(upstream, "echo"),
        "routes.auto": {"mode": "fixed", "small": "echo", "large": "echo"},
        "auth": {"admin_keys": [{"id": "sre", "sha256": hash_key(ADMIN_KEY)}]},
        "records": {"sink": "postgres", "postgres_url": postgres.url,
                    "postgres_schema": SCHEMA, "spool_dir": str(directory / "spool"),
                    "store_interval_s": 0.2},
        "canary": {"dir": str(directory / "canary")},
        "shadow": {"dir": str(directory / "shadow")},
    })
    # a top-level key comes before the first table
    path.write_text(f'redis_url = "{redis_url}"\n\n' + path.read_text())
    return path


@pytest.fixture(scope="module")
def fleet(upstream: ServerProcess, postgres_server: PostgresServer, redis_server: RedisProcess,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    haproxy = shutil.which("haproxy") or ("/usr/sbin/haproxy"
                                          if Path("/usr/sbin/haproxy").exists() else None)
    if haproxy is None:
        pytest.fail("haproxy is not installed: apt-get install haproxy (make system-deps)")
    directory = tmp_path_factory.mktemp("fleet")
    ports = {name: free_port() for name in REPLICAS}
    for name in REPLICAS:
        replica_config(upstream, postgres_server, redis_server.url, directory / name)
    env = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    fleet = Fleet("", directory, {}, ports, env, directory / "haproxy.cfg", postgres_server,
                  subprocess.Popen(["true"]))
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


@dataclass
class Load:
    """Client threads sending chat requests through HAProxy until told to stop."""

    url: str
    answered: list[tuple[str, str, int]] = field(default_factory=list)
    """(request id, replica, client) of every 200 answer, in order."""
    failures: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    stop: threading.Event = field(default_factory=threading.Event)

    def client(self, index: int) -> None:
        with httpx.Client(base_url=self.url, timeout=60) as http:
            i = 0
            while not self.stop.is_set():
                i += 1
                body = {"model": "echo", "temperature": 0.7, "max_tokens": 8,
                        "messages": [{"role": "user", "content": f"client {index} #{i}"}]}
                try:
                    answer = http.post("/v1/chat/completions", json=body)
                except httpx.HTTPError as exc:  # a request in flight on the killed replica
                    with self.lock:
                        self.failures.append(repr(exc))
                    continue
                with self.lock:
                    if answer.status_code == 200:
                        assert answer.json()["choices"][0]["message"]["content"]
                        self.answered.append((answer.headers["x-request-id"],
                                              answer.headers["x-fleet-replica"], index))
                    else:
                        self.failures.append(f"{answer.status_code} {answer.text[:200]}")

    def count(self, since: int = 0, replica: str | None = None) -> dict[int, int]:
        """200 answers per client from position ``since`` on (of one replica's, if given)."""
        with self.lock:
            found = {i: 0 for i in range(CLIENTS)}
            for _, served_by, client in self.answered[since:]:
                if replica is None or served_by == replica:
                    found[client] += 1
            return found


def test_a_threshold_changed_on_one_replica_reaches_the_others(fleet: Fleet) -> None:
    admin = {"authorization": f"Bearer {ADMIN_KEY}"}
    path = "/admin/routes/auto/threshold"
    first, *others = (fleet.replicas[name].url for name in REPLICAS)
    changed = httpx.put(first + path, json={"threshold": 0.37}, headers=admin, timeout=30)
    assert changed.status_code == 200, changed.text

    def everywhere() -> bool:
        return all(httpx.get(url + path, headers=admin, timeout=30).json()["threshold"] == 0.37
                   for url in others)

    wait_for(everywhere, timeout=60, what="the new threshold on every replica")
    answer = httpx.get(others[0] + path, headers=admin, timeout=30).json()
    assert answer["shared"] is True, answer


def test_a_killed_replica_is_routed_around_and_every_answer_is_recorded(fleet: Fleet) -> None:
    load = Load(fleet.url)
    threads = [threading.Thread(target=load.client, args=(i,), daemon=True)
               for i in range(CLIENTS)]
    for thread in threads:
        thread.start()
    try:
        victim = "g2"
        wait_for(lambda: min(load.count().values()) >= BEFORE_KILL
                 and sum(load.count(replica=victim).values()) >= 3,
                 timeout=120, what="every client answered, the victim among the replicas")
        fleet.kill(victim)
        with load.lock:
            at_kill = len(load.answered)
        wait_for(lambda: min(load.count(since=at_kill).values()) >= AFTER_KILL,
                 timeout=120, what=f"answers after the kill: {load.failures[-3:]}")
    finally:
        load.stop.set()
        for thread in threads:
            thread.join(90)
    assert not any(thread.is_alive() for thread in threads)
    after = {replica for _, replica, _ in load.answered[at_kill + CLIENTS:]}
    # answers after the kill came from the survivors (a request already on its way may not)
    assert victim not in after and after <= set(REPLICAS) - {victim}, after

    # the killed replica restarts on its spool and delivers what it had not yet delivered
    fleet.start(victim)
    answered = {request_id for request_id, _, _ in load.answered}
    wait_for(lambda: answered <= fleet.stored_ids(), timeout=120,
             what="every answered request's record in the shared store")

    # through the CLI too: every answer's record, and every chain intact
    cli_config = write_config(fleet.directory / "cli.toml", {"records": {
        "sink": "postgres", "postgres_url": fleet.postgres.url, "postgres_schema": SCHEMA}})
    export = fleet.directory / "export.jsonl"
    assert main(["records", "export", "--out", str(export), "--config", str(cli_config)]) == 0
    exported = {orjson.loads(line)["record_id"] for line in export.read_bytes().splitlines()}
    assert answered <= exported
    assert main(["audit", "verify", "--config", str(cli_config)]) == 0
