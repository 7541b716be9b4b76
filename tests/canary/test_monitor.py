"""Canaries end to end: a gateway serving the reference model plays the upstream, two replicas of
a gateway in front of it share Redis and a canary store. The upstream's weights are swapped
silently (same name, same reported tuple in the front gateways); the leader's scheduled canary
run detects it, alerts (log, metric, webhook), and every replica rolls the model's traffic back
to its pinned version until an operator acknowledges."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.http.auth import hash_key
from tests.conftest import (
    REPO,
    GatewayFactory,
    RedisProcess,
    ServerProcess,
    free_port,
    start_server,
    wait_for,
    write_config,
)

pytestmark = pytest.mark.slow

REFERENCE = REPO / "gateway" / "reference" / "models"
ADMIN = "canary-admin"
ADMIN_HEADERS = {"authorization": f"Bearer {ADMIN}"}


class Webhook:
    """A loopback HTTP receiver that keeps every JSON body POSTed to it."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        received = self.bodies

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", "0"))
                received.append(json.loads(self.rfile.read(length)))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = HTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/alerts"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    hook = Webhook()
    yield hook
    hook.close()


class Upstream:
    """The drifting upstream: a tiergate serving "ref-large" from the weights it is given,
    restartable on the same port."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server: ServerProcess | None = None

    def serve(self, weights: str) -> None:
        if self.server is not None:
            self.server.stop()
        config = write_config(self.directory / f"upstream-{weights}.toml", {
            "models.ref-large": {"backend": "engine", "path": str(REFERENCE / weights)},
            "records": {"sink": "none"},
            "canary": {"dir": str(self.directory / "upstream-canary")},
        })
        self.server = start_server([sys.executable, "-m", "gateway", "serve", "--config",
                                    str(config), "--port", str(self.port)], self.port,
                                   self.directory / f"upstream-{weights}.log")

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()


def metric(gateway: ServerProcess, name: str) -> dict[str, float]:
    text = httpx.get(gateway.url + "/metrics").text
    return {labels: float(value) for labels, value in
            re.findall(rf"^{name}(\{{[^}}]*\}})? (\S+)$", text, re.MULTILINE)}


def answering_model(gateway: ServerProcess, model: str) -> str | None:
    """Which model answered (None: the request failed, e.g. the upstream is restarting)."""
    response = httpx.post(gateway.url + "/v1/completions", timeout=30, json={
        "model": model, "prompt": "rev(12+34)=", "max_tokens": 4, "temperature": 0})
    if response.status_code != 200:
        return None
    return response.headers["x-tiergate-model"].split("@")[0]


def cli(config: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", "canary", *args, "--config",
                           str(config)], capture_output=True, text=True, cwd=REPO, timeout=120,
                          env={**os.environ, **env})


def test_silent_swap_detected_alerted_and_rolled_back_on_every_replica(
        gateway_factory: GatewayFactory, redis_server: RedisProcess, webhook: Webhook,
        tmp_path: Path) -> None:
    upstream = Upstream(tmp_path)
    upstream.serve("ref-large")
    store = tmp_path / "canary-store"
    sections = {
        "models.large": {"backend": "http", "base_url": upstream.url + "/v1",
                         "upstream_model": "ref-large", "breaker_reset_s": 1.0},
        "models.large-pinned": {"backend": "engine", "path": str(REFERENCE / "ref-large")},
        "routes.always-large": {"mode": "fixed", "small": "large-pinned", "large": "large",
                                "tier": "large"},
        "canary": {"dir": str(store), "interval_s": 1, "refresh_s": 0.5, "leader_ttl_s": 3,
                   "alert_sinks": ["log", "metric", "webhook"], "webhook_url": webhook.url},
        "canary.models.large": {"pinned": "large-pinned", "rollback": True},
        "auth": {"admin_keys": [{"id": "sre", "sha256": hash_key(ADMIN)}]},
    }
    env = {"TIERGATE_REDIS_URL": redis_server.url}
    replicas = [gateway_factory(sections, env=env) for _ in range(2)]
    try:
        # One leader among the replicas runs the scheduled canaries.
        wait_for(lambda: sum(metric(g, "tiergate_canary_leader").get("", 0)
                             for g in replicas) == 1, 10, "one canary leader")
        leader = next(g for g in replicas if metric(g, "tiergate_canary_leader").get("") == 1)

        # Pin through any replica's admin API: golden outputs decoded now.
        pinned = httpx.post(replicas[1].url + "/admin/canary/large/pin", headers=ADMIN_HEADERS,
                            timeout=120)
        assert pinned.status_code == 200, pinned.text
        assert pinned.json()["status"] == "ok" and pinned.json()["pin"]["items"] > 50
        wait_for(lambda: httpx.get(replicas[0].url + "/admin/canary/large",
                                   headers=ADMIN_HEADERS).json()["last_run"], 60,
                 "a scheduled canary run")
        status = httpx.get(replicas[0].url + "/admin/canary/large", headers=ADMIN_HEADERS).json()
        assert status["status"] == "ok" and status["last_run"]["overall"]["agreement"] == 1.0
        assert [answering_model(g, "large") for g in replicas] == ["large", "large"]

        # The silent swap: the upstream now serves the small model's weights under the name.
        upstream.serve("ref-small")
        alert = wait_for(lambda: [b for b in webhook.bodies if b["kind"] == "drift"], 90,
                         "the drift alert")[0]
        assert alert["model"] == "large" and alert["rollback_to"] == "large-pinned"
        assert alert["type"] == "tiergate.canary.alert"
        # Every replica rolls the model back: direct requests and the route's tier.
        for gateway in replicas:
            wait_for(lambda g=gateway: answering_model(g, "large") == "large-pinned", 2,
                     "the rollback on every replica")
            assert answering_model(gateway, "always-large") == "large-pinned"
            assert metric(gateway, "tiergate_canary_rollback")['{model="large"}'] == 1
        alerts = metric(leader, "tiergate_canary_alerts_total")
        assert alerts['{model="large",kind="drift",source="canary"}'] >= 1
        assert "drift" in leader.logs().lower()

        # The SRE's report: per-slice figures of the run that found the drift.
        config = replicas[0].log.parent / "tiergate.toml"
        report = cli(config, env, "status", "large")
        assert report.returncode == 0, report.stderr
        assert "drift" in report.stdout.lower() and "add/3" in report.stdout
        assert "large-pinned" in report.stdout

        # Fixed upstream, then acknowledged (CLI): the rollback ends on every replica.
        upstream.serve("ref-large")
        acked = cli(config, env, "ack", "large", "--by", "sre")
        assert acked.returncode == 0, acked.stderr
        assert "acknowledged" in acked.stdout
        for gateway in replicas:
            wait_for(lambda g=gateway: metric(g, "tiergate_canary_rollback")[
                '{model="large"}'] == 0, 2, "the end of the rollback on every replica")
            # (the upstream's circuit may still be open from its restart for a moment)
            wait_for(lambda g=gateway: answering_model(g, "large") == "large", 10,
                     "traffic back on the model")
    finally:
        upstream.stop()


def test_shadow_traffic_against_the_pinned_version_detects_a_swap(
        gateway_factory: GatewayFactory, tmp_path: Path) -> None:
    """No scheduled runs: live requests mirrored to the pinned version are the evidence."""
    upstream = Upstream(tmp_path)
    upstream.serve("ref-large")
    gateway = gateway_factory({
        "models.large": {"backend": "http", "base_url": upstream.url + "/v1",
                         "upstream_model": "ref-large", "breaker_reset_s": 1.0},
        "models.large-pinned": {"backend": "engine", "path": str(REFERENCE / "ref-large")},
        "canary": {"interval_s": 0, "refresh_s": 0.3, "alert_sinks": ["log", "metric"]},
        "canary.models.large": {"pinned": "large-pinned", "rollback": True},
        "shadow.mirrors.large": {"target": "large-pinned", "share": 1.0},
        "auth": {"admin_keys": [{"id": "sre", "sha256": hash_key(ADMIN)}]},
    })
    try:
        pinned = httpx.post(gateway.url + "/admin/canary/large/pin", headers=ADMIN_HEADERS,
                            timeout=120)
        assert pinned.status_code == 200, pinned.text
        prompts = [f"rev({a}+{b})=" for a, b in zip(range(101, 960, 43), range(57, 999, 47),
                                                       strict=False)]

        def send(prompt: str) -> str | None:
            response = httpx.post(gateway.url + "/v1/completions", timeout=30, json={
                "model": "large", "prompt": prompt, "max_tokens": 5, "temperature": 0})
            return response.headers.get("x-tiergate-model", "").split("@")[0] or None

        for prompt in prompts[:8]:  # unchanged upstream: identical pairs, no alarm
            assert send(prompt) == "large"
        identical = '{model="large",target="large-pinned",outcome="identical"}'
        wait_for(lambda: metric(gateway, "tiergate_shadow_total").get(identical) == 8, 30,
                 "eight identical shadow pairs")
        time.sleep(0.6)  # two evidence feeds
        status = httpx.get(gateway.url + "/admin/canary/large", headers=ADMIN_HEADERS).json()
        assert status["status"] == "ok"

        upstream.serve("ref-small")  # the swap; no canary run will happen
        for prompt in prompts[8:]:
            send(prompt)
            if metric(gateway, "tiergate_canary_rollback").get('{model="large"}') == 1:
                break
        wait_for(lambda: metric(gateway, "tiergate_canary_rollback").get('{model="large"}') == 1,
                 5, "the rollback from shadow evidence")
        alerts = metric(gateway, "tiergate_canary_alerts_total")
        assert alerts['{model="large",kind="drift",source="shadow"}'] == 1
        assert send("rev(11+22)=") == "large-pinned"
        status = httpx.get(gateway.url + "/admin/canary/large", headers=ADMIN_HEADERS).json()
        assert status["status"] == "drift" and status["rollback_to"] == "large-pinned"
        assert status["last_run"] is None  # decided by live traffic alone
        acked = httpx.post(gateway.url + "/admin/canary/large/ack", headers=ADMIN_HEADERS,
                           json={"by": "sre"})
        assert acked.status_code == 200 and acked.json()["rollback_to"] is None
        assert acked.json()["acknowledged"]["acknowledged_by"] == "sre"
    finally:
        upstream.stop()
