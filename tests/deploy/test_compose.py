"""The compose deployment (deploy/compose/) — no Docker daemon here, so in two halves:

- the compose file, structurally: every service it depends on exists and, where it waits for it
  to be healthy, has a health check; the gateway's probe is ``/readyz`` and only the load
  balancer publishes a port; the vLLM tiers reserve GPUs, keep a weight cache and wait for
  their ``/health``; records go to the compose's PostgreSQL (its password only from the
  environment), client keys to Redis; every file and named volume it mounts exists; the hosts
  the gateway's settings name are its services;
- the load balancer's config, ``deploy/compose/haproxy.cfg`` itself, run by a real HAProxy in
  front of gateways on loopback addresses (127.0.0.2, ...) on one port, as compose replicas
  are on the compose network: a DNS server of the test answers the service name with the
  replicas' addresses as Docker's does. Requests reach every replica, a replica added to the
  name (``--scale``) gets traffic, and one stopped is routed around."""

from __future__ import annotations

import os
import re
import socket
import struct
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import yaml

from gateway.settings import load_settings
from tests.conftest import (
    REPO,
    ServerProcess,
    free_port,
    upstream_model,
    wait_for,
    write_config,
)
from tests.deploy.conftest import haproxy_binary, metric

COMPOSE = REPO / "deploy" / "compose"
HAPROXY_CFG = COMPOSE / "haproxy.cfg"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((COMPOSE / "docker-compose.yaml").read_text())
    return document


def depends_on(service: dict[str, Any]) -> dict[str, str]:
    """A service's dependencies and the condition each waits for (both compose forms)."""
    found = service.get("depends_on", {})
    if isinstance(found, list):
        return {name: "service_started" for name in found}
    return {name: spec.get("condition", "service_started") for name, spec in found.items()}


def test_dependencies_exist_and_the_healthy_ones_have_health_checks(
        compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, service in services.items():
        for dependency, condition in depends_on(service).items():
            assert dependency in services, (name, dependency)
            if condition == "service_healthy":
                assert "healthcheck" in services[dependency], (name, dependency)
    # the gateway waits for what it needs; the load balancer for a healthy gateway
    assert depends_on(services["tiergate"]) == {
        "redis": "service_healthy", "postgres": "service_healthy",
        "vllm-small": "service_healthy", "vllm-large": "service_healthy"}
    assert depends_on(services["lb"]) == {"tiergate": "service_healthy"}


def test_only_the_load_balancer_publishes_and_it_checks_readiness(
        compose: dict[str, Any]) -> None:
    services = compose["services"]
    published = {name for name, service in services.items() if service.get("ports")}
    assert published == {"lb"}  # replicas scale freely: no host port of their own
    settings = load_settings(COMPOSE / "tiergate.toml")
    port = settings.server.port
    assert services["lb"]["ports"] == [f"{port}:{port}"]
    assert f"{port}" in [str(p) for p in services["tiergate"]["expose"]]
    probe = " ".join(services["tiergate"]["healthcheck"]["test"])
    assert f"127.0.0.1:{port}/readyz" in probe
    mounts = dict(v.rsplit(":", 2)[:2] for v in services["lb"]["volumes"])
    assert mounts == {"./haproxy.cfg": "/usr/local/etc/haproxy/haproxy.cfg"}
    config = HAPROXY_CFG.read_text()
    assert "option httpchk GET /readyz" in config
    assert f'"${{TIERGATE_LB_REPLICAS-tiergate:{port}}}"' in config
    assert f'"${{TIERGATE_LB_BIND-:{port}}}"' in config


def test_gpu_tiers_reserve_gpus_keep_weights_and_report_health(
        compose: dict[str, Any]) -> None:
    services = compose["services"]
    settings = load_settings(COMPOSE / "tiergate.toml")
    for tier in ("vllm-small", "vllm-large"):
        service = services[tier]
        [device] = service["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
        assert device["count"] >= 1
        assert any(v.endswith(":/root/.cache/huggingface") for v in service["volumes"])
        check = service["healthcheck"]
        assert "/health" in " ".join(check["test"]) and "start_period" in check
        assert not service["image"].endswith(":latest")
        # the model name the gateway asks for is the one the server serves
        served = service["command"][service["command"].index("--served-model-name") + 1]
        model = next(m for m in settings.models.values()
                     if tier in str(getattr(m, "base_url", "")))
        assert getattr(model, "upstream_model", None) == served
    large = services["vllm-large"]["command"]
    assert int(large[large.index("--tensor-parallel-size") + 1]) == \
        services["vllm-large"]["deploy"]["resources"]["reservations"]["devices"][0]["count"]


def test_records_go_to_postgres_with_the_password_from_the_environment(
        compose: dict[str, Any]) -> None:
    services = compose["services"]
    settings = load_settings(COMPOSE / "tiergate.toml")
    assert settings.records.sink == "postgres" and settings.keys.store == "redis"
    url = urlsplit(settings.records.postgres_url)
    assert url.hostname in services and url.password is None  # no password in the file
    database = services[url.hostname]
    env = database["environment"]
    assert env["POSTGRES_USER"] == url.username and env["POSTGRES_DB"] == url.path.lstrip("/")
    assert int(env.get("PGPORT", 5432)) == (url.port or 5432)
    # one password, the operator's (compose refuses to start without it), given to both sides
    password = env["POSTGRES_PASSWORD"]
    assert re.fullmatch(r"\$\{POSTGRES_PASSWORD:\?[^}]+\}", password), password
    assert services["tiergate"]["environment"]["PGPASSWORD"] == password
    check = " ".join(database["healthcheck"]["test"])
    assert "pg_isready" in check and f"-U {url.username}" in check
    assert any(v.split(":", 1)[1] == "/var/lib/postgresql/data" for v in database["volumes"])


def test_mounted_files_and_volumes_exist_and_hosts_are_services(
        compose: dict[str, Any]) -> None:
    services = compose["services"]
    declared = set(compose.get("volumes", {}))
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("."):
                assert (COMPOSE / source).is_file(), (name, source)
            else:
                assert source in declared, (name, source)
        assert "image" in service or "build" in service
        if "image" in service:
            assert ":" in service["image"] and not service["image"].endswith(":latest")
    settings = load_settings(COMPOSE / "tiergate.toml")
    urls = [settings.redis_url or "", settings.records.postgres_url,
            *(str(getattr(m, "base_url", "")) for m in settings.models.values())]
    for url in urls:
        assert urlsplit(url).hostname in services, url


# -- the load balancer's config, run ------------------------------------------------------------

class ServiceDNS:
    """A DNS server on a loopback UDP port answering one name with A records of ``addresses``
    (changeable while it runs), as Docker's embedded DNS answers a compose service's name."""

    def __init__(self, name: str, addresses: list[str]) -> None:
        self.name = name
        self.addresses = list(addresses)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self.closed = False
        threading.Thread(target=self.serve, daemon=True).start()

    def answer(self, query: bytes) -> bytes:
        ident, _flags, questions = struct.unpack(">HHH", query[:6])
        labels, at = [], 12
        while query[at]:
            length = query[at]
            labels.append(query[at + 1:at + 1 + length].decode().lower())
            at += length + 1
        qtype, _qclass = struct.unpack(">HH", query[at + 1:at + 5])
        question = query[12:at + 5]
        known = ".".join(labels) == self.name
        records = list(self.addresses) if known and qtype == 1 else []
        flags = 0x8180 if known else 0x8183  # a response, recursion available; NXDOMAIN
        header = struct.pack(">HHHHHH", ident, flags, 1 if questions else 0, len(records), 0, 0)
        answers = b"".join(struct.pack(">HHHIH", 0xC00C, 1, 1, 1, 4) + socket.inet_aton(a)
                           for a in records)
        return header + question + answers

    def serve(self) -> None:
        while not self.closed:
            try:
                query, peer = self.sock.recvfrom(4096)
            except OSError:
                return
            try:
                self.sock.sendto(self.answer(query), peer)
            except (OSError, IndexError, struct.error, UnicodeDecodeError):
                continue

    def close(self) -> None:
        self.closed = True
        self.sock.close()


def start_replica(host: str, port: int, directory: Path,
                  upstream: ServerProcess) -> ServerProcess:
    """A gateway listening on ``host``:``port`` (a compose replica on its own address)."""
    directory.mkdir()
    config = write_config(directory / "tiergate.toml", {
        "models.echo": upstream_model(upstream, "echo"),
        "records": {"sink": "none"},
        "canary": {"dir": str(directory / "canary"), "interval_s": 0},
        "shadow": {"dir": str(directory / "shadow")},
    })
    log = directory / "gateway.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--config", str(config), "--host", host,
         "--port", str(port)], stdout=log.open("wb"), stderr=subprocess.STDOUT, cwd=REPO,
        env={**os.environ, "OMP_NUM_THREADS": "1"})
    server = ServerProcess(process, f"http://{host}:{port}", log)

    def ready() -> bool:
        if process.poll() is not None:
            raise RuntimeError(server.logs())
        try:
            return httpx.get(server.url + "/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(ready, timeout=60, what=f"the replica on {host}")
    return server


def served(server: ServerProcess) -> float:
    """Chat requests the replica answered (its ``tiergate_requests_total``)."""
    return sum(metric(server, "tiergate_requests_total").values())


def test_the_compose_haproxy_config_balances_scales_and_routes_around(
        upstream: ServerProcess, tmp_path: Path) -> None:
    haproxy = haproxy_binary()
    checked = subprocess.run([haproxy, "-c", "-f", str(HAPROXY_CFG)], capture_output=True,
                             text=True, timeout=30)  # as compose runs it: the defaults
    assert checked.returncode == 0, checked.stdout + checked.stderr

    port, lb_port = free_port(), free_port()
    hosts = ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
    dns = ServiceDNS("tiergate", hosts[:2])
    servers: dict[str, ServerProcess] = {}
    balancer: subprocess.Popen[bytes] | None = None
    try:
        for host in hosts[:2]:
            servers[host] = start_replica(host, port, tmp_path / host, upstream)
        env = {**os.environ, "TIERGATE_LB_DNS": dns.address,
               "TIERGATE_LB_BIND": f"127.0.0.1:{lb_port}",
               "TIERGATE_LB_REPLICAS": f"tiergate:{port}"}
        checked = subprocess.run([haproxy, "-c", "-f", str(HAPROXY_CFG)], env=env,
                                 capture_output=True, text=True, timeout=30)
        assert checked.returncode == 0, checked.stdout + checked.stderr
        log = tmp_path / "haproxy.log"
        balancer = subprocess.Popen([haproxy, "-db", "-f", str(HAPROXY_CFG)], env=env,
                                    stdout=log.open("wb"), stderr=subprocess.STDOUT)
        lb = f"http://127.0.0.1:{lb_port}"

        def ask() -> int:
            if balancer is not None and balancer.poll() is not None:
                raise RuntimeError(log.read_text())
            try:
                return httpx.post(lb + "/v1/chat/completions", timeout=30, json={
                    "model": "echo", "messages": [{"role": "user", "content": "hi"}]}
                ).status_code
            except httpx.HTTPError:
                return 0

        def every_replica_answered() -> bool:
            ask()
            return all(served(server) > 0 for server in servers.values())

        wait_for(every_replica_answered, timeout=60, what="answers from every replica")

        # --scale tiergate=3: a third replica on the name is found and gets traffic
        servers[hosts[2]] = start_replica(hosts[2], port, tmp_path / hosts[2], upstream)
        dns.addresses.append(hosts[2])
        wait_for(every_replica_answered, timeout=60, what="answers from the new replica")

        # a replica stops (as `docker compose stop` or a crash): its requests go elsewhere
        servers.pop(hosts[0]).stop()
        statuses = [ask() for _ in range(20)]
        assert statuses == [200] * 20, statuses
    finally:
        if balancer is not None and balancer.poll() is None:
            balancer.terminate()
            balancer.wait(10)
        for server in servers.values():
            server.stop()
        dns.close()
