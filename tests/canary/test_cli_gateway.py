"""``tiergate canary`` from the shell beside a running gateway: over an HTTP backend the pins
hold token ids and runs a logprob shift (the canary asks the upstream for them), and an alarm
the CLI raises is counted in the gateway's ``tiergate_canary_alerts_total``."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import REPO, GatewayFactory, write_config

MODELS = REPO / "gateway" / "reference" / "models"
pytestmark = pytest.mark.slow


def tiergate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", *args], capture_output=True,
                          text=True, cwd=REPO, timeout=300)


def alerts_counted(url: str, model: str) -> float:
    for line in httpx.get(url + "/metrics").text.splitlines():
        if line.startswith("tiergate_canary_alerts_total{") and f'model="{model}"' in line \
                and 'kind="drift"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_cli_pins_over_http_with_token_ids_and_its_alarm_is_counted(
        gateway_factory: GatewayFactory, tmp_path: Path) -> None:
    store = tmp_path / "canary"
    gateway = gateway_factory({
        "models.ref-large": {"backend": "engine", "path": str(MODELS / "ref-large"),
                             "threads": 1},
        "models.ref-small": {"backend": "engine", "path": str(MODELS / "ref-small"),
                             "threads": 1},
        "canary": {"dir": str(store), "refresh_s": 0.2, "interval_s": 0,
                   "alert_sinks": ["log", "metric"]},
    })

    def cli_config(name: str, upstream_model: str) -> str:
        return str(write_config(tmp_path / f"{name}.toml", {
            "canary": {"dir": str(store)},
            "models.up": {"backend": "http", "base_url": gateway.url + "/v1",
                          "upstream_model": upstream_model},
        }))

    same = cli_config("same", "ref-large")
    pinned = tiergate("canary", "pin", "up", "--config", same)
    assert pinned.returncode == 0, pinned.stderr
    pin = json.loads((store / "up" / "pin.json").read_text())
    assert all(g["token_ids"] for g in pin["golden"])  # the upstream was asked for them

    run = tiergate("canary", "run", "up", "--config", same, "--json")
    assert run.returncode == 0, run.stderr
    overall = json.loads(run.stdout)[0]["overall"]
    assert overall["agreement"] == 1.0
    assert overall["logprob_shift"] == pytest.approx(0.0, abs=1e-6)  # a number, not '-'
    text = tiergate("canary", "status", "up", "--config", same)
    assert "+0.0000" in text.stdout

    assert alerts_counted(gateway.url, "up") == 0
    swapped = tiergate("canary", "run", "up", "--config", cli_config("swapped", "ref-small"))
    assert swapped.returncode == 1, swapped.stderr  # drift, raised by the CLI
    deadline = time.monotonic() + 30  # the gateway re-reads the store every refresh_s
    while alerts_counted(gateway.url, "up") == 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert alerts_counted(gateway.url, "up") == 1
    time.sleep(0.5)  # more refreshes: each alarm is counted once
    assert alerts_counted(gateway.url, "up") == 1
