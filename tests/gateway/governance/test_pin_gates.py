"""The gates at canary pin time (``governance.ungated = "refuse"``): a tuple that fails them is
not pinned — the admin API answers 409 ``model_not_validated`` naming the gates, the CLI one
line and exit 2 — unless the model has a ``gate_override`` (pinned, the override logged); a
gated tuple is pinned."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from gateway.governance.pinning import check_pin
from gateway.kernel.errors import ServiceUnavailableError
from gateway.models.registry import ModelRegistry
from gateway.settings import Settings
from tests.conftest import REPO, write_config
from tests.gateway.governance.conftest import ADMIN, Gated, sections

HEADERS = {"authorization": f"Bearer {ADMIN}"}


def pin(refusing: Gated, model: str) -> httpx.Response:
    return httpx.post(f"{refusing.server.url}/admin/canary/{model}/pin", headers=HEADERS,
                      timeout=300)


def test_the_admin_api_refuses_to_pin_a_tuple_evaluated_as_another(refusing: Gated) -> None:
    answer = pin(refusing, "ref-small-refused")
    assert answer.status_code == 409, answer.text
    error = answer.json()["error"]
    assert error["code"] == "model_not_validated" and error["param"] == "model"
    assert error["message"].startswith("cannot pin ref-small-refused: its tuple sha256:")
    assert "fails its gates (evaluated, quantized): evaluated: " in error["message"]
    status = httpx.get(f"{refusing.server.url}/admin/canary/ref-small-refused",
                       headers=HEADERS).json()
    assert status["pin"] is None


def test_an_override_pins_and_is_logged(refusing: Gated) -> None:
    answer = pin(refusing, "ref-small-overridden")
    assert answer.status_code == 200, answer.text
    assert answer.json()["pin"]["version"] == 1
    logs = refusing.server.logs()
    assert "pinning ref-small-overridden despite failed gates (evaluated:" in logs
    assert "override: TICKET-42: eval pending" in logs


def test_a_gated_tuple_pins(refusing: Gated) -> None:
    answer = pin(refusing, "ref-large")
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["pin"]["items"] > 0 and body["status"] == "ok"
    assert "pinning ref-large" not in refusing.server.logs()


def cli_pin(refusing: Gated, tmp_path: Path, model: str,
            **env: str) -> subprocess.CompletedProcess[str]:
    configured = sections(tmp_path)
    unevaluated = {k: v for k, v in configured["models.ref-large"].items() if k != "eval"}
    config = write_config(tmp_path / "tiergate.toml",
                          {**configured, "models.ref-large-unevaluated": unevaluated})
    return subprocess.run([sys.executable, "-m", "gateway", "canary", "pin", model, "--config",
                           str(config)], capture_output=True, text=True, cwd=REPO, timeout=300,
                          env={**os.environ, **refusing.env, **env})


def test_the_cli_refuses_in_one_line_and_exit_2(refusing: Gated, tmp_path: Path) -> None:
    run = cli_pin(refusing, tmp_path, "ref-large-unevaluated")
    assert run.returncode == 2, run.stderr
    refused = [line for line in run.stderr.splitlines() if line.startswith("tiergate: ")]
    assert len(refused) == 1 and run.stdout == ""
    assert refused[0].startswith("tiergate: cannot pin ref-large-unevaluated: its tuple ")
    assert "fails its gates (evaluated): evaluated: no validating eval" in refused[0]


def test_the_cli_pins_with_a_warning_when_ungated_is_warn(refusing: Gated,
                                                           tmp_path: Path) -> None:
    canary = tmp_path / "canary"  # not the gateway's store: this pin is the CLI's own
    run = cli_pin(refusing, tmp_path, "ref-small-refused",
                  TIERGATE_GOVERNANCE__UNGATED="warn", TIERGATE_CANARY__DIR=str(canary))
    assert run.returncode == 0, run.stderr
    assert "pinning ref-small-refused ungated (governance.ungated = warn): evaluated:" \
        in run.stderr
    assert run.stdout.startswith("pinned ref-small-refused v1: tuple sha256:")


def test_a_model_not_loaded_yet_is_not_gated_but_told_to_wait() -> None:
    settings = Settings.model_validate(
        {"models": {"later": {"backend": "http", "base_url": "http://127.0.0.1:9/v1"}}})
    with pytest.raises(ServiceUnavailableError, match="model later is not loaded: pin it once "
                                                      "it serves") as raised:
        check_pin(settings, ModelRegistry(settings), "later")
    assert raised.value.code == "model_loading"
