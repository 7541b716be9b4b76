"""``tiergate models`` shows what the gateway serves: the same routes and, for every model, the
same tuple digest as a running gateway's ``/v1/models`` (int8 models included, whose tuple
covers what only loading them knows)."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import httpx

from gateway.settings import read_config_file
from tests.conftest import REPO, GatewayFactory

CONFIG = REPO / "deploy" / "local" / "tiergate.toml"


def tiergate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", *args], capture_output=True,
                          text=True, cwd=REPO, timeout=300)


def test_models_shows_the_served_routes_and_digests(gateway_factory: GatewayFactory) -> None:
    data = read_config_file(CONFIG)
    sections: dict[str, dict[str, Any]] = {
        f"models.{name}": data["models"][name] for name in ("ref-small-int8", "ref-large")}
    sections["routes.auto"] = data["routes"]["auto"]
    gateway = gateway_factory(sections)
    config = str(gateway.log.parent / "tiergate.toml")
    served = {card["id"]: card["tiergate"]
              for card in httpx.get(gateway.url + "/v1/models").json()["data"]}

    shown = tiergate("models", "--config", config, "--json")
    assert shown.returncode == 0, shown.stderr
    assert "loading 2 models" in shown.stderr  # says what it does while it loads
    listed = {card["id"]: card["tiergate"] for card in json.loads(shown.stdout)}
    assert listed == served  # routes included; every tuple and digest alike
    assert served["ref-small-int8"]["quantization"]["details"]["layers_quantized"] > 0

    text = tiergate("models", "--config", config)
    assert text.returncode == 0, text.stderr
    for name in ("ref-small-int8", "ref-large"):
        assert f"{name}\n" in text.stdout
        assert f"tuple digest  {served[name]['digest']}" in text.stdout
    assert "auto  (route, cascade)" in text.stdout
    assert f"verifier      {served['auto']['verifier_id']}" in text.stdout

    pinned = tiergate("models", "--config", config, "--pinned")
    assert pinned.returncode == 0, pinned.stderr
    assert "loading" not in pinned.stderr
    assert "tuple digest  - (known once loaded" in pinned.stdout
    assert served["ref-small-int8"]["digest"] not in pinned.stdout
