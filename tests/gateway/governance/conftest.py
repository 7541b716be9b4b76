"""A real gateway serving the reference pair with ``governance.ungated = "refuse"`` (the
default; the rest of the suite sets ``warn``): one model gated, one stale, three pointed at
another tuple's eval (refused, refused with a fallback, overridden). Its registry history,
records store and canary store are in its folder, named by the environment the CLI runs with."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.http.auth import hash_key
from tests.conftest import REPO, GatewayFactory, ServerProcess

MODELS = REPO / "gateway" / "reference" / "models"
EVALS = REPO / "deploy" / "local" / "evals"
ADMIN = "tg-admin-governance-test"
LARGE_SHA = "17020a59524937ac4559b54889953e1fed3ca25a4fa37e83ceebe92bff5929a4"
SMALL_SHA = "d4ebc9ca047d340475ad90bac0d3922f5a5b54cb14c4daa0ca267228fa770b5f"


def sections(tmp_path: Path) -> dict[str, dict[str, Any]]:
    large = {"backend": "engine", "path": str(MODELS / "ref-large"), "weights_sha256": LARGE_SHA,
             "eval": str(EVALS / "ref-large.json"), "owner": "reference-team"}
    # ref-small at int8, pointed at ref-large's eval: the eval of another tuple
    small = {"backend": "engine", "path": str(MODELS / "ref-small"), "int8": True,
             "weights_sha256": SMALL_SHA, "eval": str(EVALS / "ref-large.json")}
    return {
        "models.ref-large": large,
        "models.ref-large-stale": {**large, "reevaluate_days": 1e-6},
        "models.ref-small-refused": small,
        "models.ref-small-fallback": {**small, "fallbacks": ["ref-large"]},
        "models.ref-small-overridden": {**small, "gate_override": "TICKET-42: eval pending"},
        "auth": {"admin_keys": [{"id": "sre", "sha256": hash_key(ADMIN)}]},
        "canary": {"alert_sinks": ["log", "metric"]},
    }


@dataclass(frozen=True, slots=True)
class Gated:
    server: ServerProcess
    env: dict[str, str]
    """What the gateway ran with: the CLI reads the same history, records and canary store."""
    directory: Path


@pytest.fixture(scope="session")
def refusing(gateway_factory: GatewayFactory,
             tmp_path_factory: pytest.TempPathFactory) -> Gated:
    directory = tmp_path_factory.mktemp("gates")
    env = {"TIERGATE_GOVERNANCE__UNGATED": "refuse",
           "TIERGATE_GOVERNANCE__HISTORY_PATH": str(directory / "registry.sqlite3"),
           "TIERGATE_RECORDS__SQLITE_PATH": str(directory / "records.sqlite3"),
           "TIERGATE_RECORDS__FLUSH_INTERVAL_S": "0.01",
           "TIERGATE_CANARY__DIR": str(directory / "canary")}
    return Gated(gateway_factory(sections(directory), env=env), env, directory)


def complete(server: ServerProcess, model: str) -> httpx.Response:
    return httpx.post(server.url + "/v1/completions", timeout=60,
                      json={"model": model, "prompt": "rev(3+4)=", "max_tokens": 3})


