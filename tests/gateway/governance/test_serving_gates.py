"""The gates at serve time, on a real gateway serving the reference pair with
``governance.ungated = "refuse"`` (the default): a gated model serves with its eval in its tuple;
a model whose eval is another tuple's is refused (503 ``model_not_validated``, a fallback
answers instead); an override serves with its reason logged; a stale tuple raises an alert;
the registry is readable over the admin API, in ``/health``, ``/metrics`` and the CLI."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import httpx
import orjson

from tests.conftest import REPO, write_config
from tests.gateway.governance.conftest import (
    ADMIN,
    EVALS,
    LARGE_SHA,
    Gated,
    complete,
    sections,
)


def test_a_gated_model_serves_with_its_eval_in_its_tuple(refusing: Gated) -> None:
    server = refusing.server
    answer = complete(server, "ref-large")
    assert answer.status_code == 200, answer.text
    eval_file = (EVALS / "ref-large.json").read_bytes()
    card = next(m for m in httpx.get(server.url + "/v1/models").json()["data"]
                if m["id"] == "ref-large")
    evaluation = card["tiergate"]["validating_eval"]
    assert evaluation["id"] == orjson.loads(eval_file)["report"]["id"]
    assert evaluation["sha256"] == hashlib.sha256(eval_file).hexdigest()


def test_a_model_failing_its_gates_is_refused_and_a_fallback_answers(refusing: Gated) -> None:
    server = refusing.server
    refused = complete(server, "ref-small-refused")
    assert refused.status_code == 503
    error = refused.json()["error"]
    assert error["code"] == "model_not_validated" and "evaluated tuple" in error["message"]
    answered = complete(server, "ref-small-fallback")
    assert answered.status_code == 200, answered.text
    assert answered.headers["x-tiergate-model"].startswith("ref-large@")
    assert "model ref-small-refused refused: evaluated:" in server.logs()


def test_an_override_serves_with_its_reason_logged(refusing: Gated) -> None:
    server = refusing.server
    assert complete(server, "ref-small-overridden").status_code == 200
    assert "model ref-small-overridden serves despite failed gates" in server.logs()
    assert "override: TICKET-42: eval pending" in server.logs()


def test_the_registry_in_health_metrics_and_the_admin_api(refusing: Gated) -> None:
    server = refusing.server
    health = httpx.get(server.url + "/health").json()["governance"]
    assert health["refused"] == ["ref-small-refused", "ref-small-fallback"]
    # ref-large-stale: evaluated when its eval ran, a period of 0.09 s; the override: never
    assert health["stale"] == ["ref-large-stale", "ref-small-overridden"]
    metrics = httpx.get(server.url + "/metrics").text
    assert 'tiergate_tuple_gate_status{model="ref-large"} 0' in metrics
    assert 'tiergate_tuple_gate_status{model="ref-small-overridden"} 1' in metrics
    assert 'tiergate_tuple_gate_status{model="ref-small-refused"} 3' in metrics
    assert 'tiergate_tuple_stale{model="ref-large-stale"} 1' in metrics
    assert 'tiergate_tuple_stale{model="ref-large"} 0' in metrics
    assert ('tiergate_canary_alerts_total{model="ref-large-stale",kind="stale",'
            'source="registry"} 1') in metrics
    assert 'tiergate_tuple_stale{model="ref-small-refused"} 0' in metrics
    assert 'tiergate_governance_coverage{of="owners"} 0.4' in metrics  # 2 of 5 have an owner
    assert "canary stale: ref-large-stale: model ref-large-stale" in server.logs()

    admin = {"authorization": f"Bearer {ADMIN}"}
    assert httpx.get(server.url + "/admin/registry").status_code in (401, 403)
    listing = httpx.get(server.url + "/admin/registry", headers=admin).json()
    by_name = {m["name"]: m for m in listing["models"]}
    assert by_name["ref-large"]["status"] == "gated"
    assert by_name["ref-large"]["owner"] == "reference-team"
    assert by_name["ref-small-refused"]["gates"][0]["passed"] is False
    eval_file = orjson.loads((EVALS / "ref-large.json").read_bytes())["report"]
    assert {r["slice"]: r["accuracy"] for r in by_name["ref-large"]["slices"]} == {
        name: figure["accuracy"] for name, figure in eval_file["slices"].items()}
    assert "tuple" not in by_name["ref-large"]
    whole = httpx.get(server.url + "/admin/registry?tuples=true", headers=admin).json()
    assert {m["name"]: m["tuple"]["name"] for m in whole["models"]} == {
        name: name for name in by_name}
    bad = httpx.get(server.url + "/admin/registry?tuples=yes", headers=admin)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "tuples"
    one = httpx.get(server.url + "/admin/registry/ref-large", headers=admin).json()
    assert one["tuple"]["name"] == "ref-large" and one["served"][0]["status"] == "gated"
    digest = by_name["ref-large"]["digest"]
    by_digest = httpx.get(server.url + f"/admin/registry/{digest[7:19]}", headers=admin).json()
    assert by_digest["served"][0]["digest"] == digest
    missing = httpx.get(server.url + "/admin/registry/nothing-here", headers=admin)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"


def test_the_cli_reads_what_the_gateway_recorded(
        refusing: Gated, tmp_path: Path) -> None:
    env = refusing.env
    config = write_config(tmp_path / "tiergate.toml", sections(tmp_path))
    run = subprocess.run([sys.executable, "-m", "gateway", "registry", "list", "--config",
                          str(config)], capture_output=True, text=True, cwd=REPO, timeout=60,
                         env={**os.environ, **env})
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert any(line.startswith("ref-small-refused") and "refused" in line for line in lines)
    assert any(line.startswith("ref-large ") and "gated" in line and "reference-team" in line
               for line in lines)
    assert any("✗ evaluated:" in line for line in lines)
    assert "eval coverage: 1/5 served tuples gated with a current eval" in run.stdout
    shown = subprocess.run([sys.executable, "-m", "gateway", "registry", "show", "ref-large",
                            "--config", str(config)], capture_output=True, text=True, cwd=REPO,
                           timeout=60, env={**os.environ, **env})
    assert shown.returncode == 0, shown.stderr
    body = orjson.loads(shown.stdout)
    assert body["tuple"]["base_weights_sha256"] == LARGE_SHA
    assert body["evaluated"][1] == "eval"
