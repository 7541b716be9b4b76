"""Cost everywhere a request is accounted, on a real gateway over the scriptable upstream: every
call of a request (a cascade's small call too, also when the large call then fails) in its
record, the metrics and the response header; a stream the client leaves mid-answer still
accounted; and the savings report adding up to the records."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from gateway.http.auth import hash_key
from tests.conftest import REPO, GatewayFactory, ServerProcess, upstream_model, write_config
from tests.router.test_routing import manifest_sha256, training_rows
from verifiers.training import train_artifact

ADMIN = "admin-secret"
HEADERS = {"authorization": f"Bearer {ADMIN}"}
SMALL = {"kind": "tokens", "input_usd_per_mtok": 1.0, "output_usd_per_mtok": 2.0}
LARGE = {"kind": "tokens", "input_usd_per_mtok": 10.0, "output_usd_per_mtok": 30.0}
STALL = {"kind": "serving-time", "usd_per_hour": 3600.0, "concurrency": 2.0}  # $0.5 a second


def priced(usage: dict[str, Any], prices: dict[str, Any]) -> float:
    return (usage["prompt_tokens"] * prices["input_usd_per_mtok"]
            + usage["completion_tokens"] * prices["output_usd_per_mtok"]) / 1e6


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory, upstream: ServerProcess) -> dict[str, Any]:
    base = tmp_path_factory.mktemp("cost")
    data = base / "answer.jsonl"
    data.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in training_rows("answer")))
    train_artifact(data, "answer", base / "answer", target="small-wrong")
    return {
        "models.small": {**upstream_model(upstream, "echo"), "cost": SMALL},
        "models.large": {**upstream_model(upstream, "echo"), "cost": LARGE},
        "models.stall": {**upstream_model(upstream, "stall-500"), "cost": STALL},
        "models.broken": {**upstream_model(upstream, "status-500"), "cost": LARGE,
                          "retries": 0},
        "routes.cascade": {"mode": "cascade", "small": "small", "large": "large",
                           "verifier": str(base / "answer"), "threshold": 0.5,
                           "verifier_sha256": manifest_sha256(base / "answer")},
        "routes.broken-cascade": {"mode": "cascade", "small": "small", "large": "broken",
                                  "verifier": str(base / "answer"), "threshold": 0.5,
                                  "verifier_sha256": manifest_sha256(base / "answer")},
        "auth": {"admin_keys": [{"id": "sre", "sha256": hash_key(ADMIN)}]},
        "records": {"sqlite_path": str(base / "records.sqlite3"),
                    "spool_dir": str(base / "spool"), "store_interval_s": 0.1},
        "shadow": {"dir": str(base / "shadow")},
        "canary": {"dir": str(base / "canary")},
    }


@pytest.fixture(scope="module")
def priced_gateway(gateway_factory: GatewayFactory, config: dict[str, Any]) -> ServerProcess:
    return gateway_factory(config)


def record(gateway: ServerProcess, record_id: str) -> dict[str, Any]:
    """The stored record, once the delivery process has written it."""
    for _ in range(400):
        found = httpx.get(f"{gateway.url}/admin/records/{record_id}", headers=HEADERS)
        if found.status_code == 200:
            body: dict[str, Any] = found.json()
            return body
        time.sleep(0.05)
    raise AssertionError(f"record {record_id} never stored")


def cost_metric(gateway: ServerProcess, route: str, model: str) -> float:
    text = httpx.get(gateway.url + "/metrics").text
    for line in text.splitlines():
        if line.startswith("tiergate_cost_usd_total{") and f'route="{route}"' in line \
                and f'model="{model}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def ask(gateway: ServerProcess, route: str, prompt: str) -> httpx.Response:
    return httpx.post(gateway.url + "/v1/chat/completions", timeout=30, json={
        "model": route, "messages": [{"role": "user", "content": prompt}]})


def test_an_escalated_cascade_accounts_both_calls(priced_gateway: ServerProcess) -> None:
    before = cost_metric(priced_gateway, "cascade", "small"), \
        cost_metric(priced_gateway, "cascade", "large")
    answer = ask(priced_gateway, "cascade", "hard puzzle number 21")
    assert answer.headers["x-tiergate-escalated"] == "true"
    stored = record(priced_gateway, answer.headers["x-tiergate-record-id"])
    small, large = stored["calls"]
    assert (small["model"]["name"], large["model"]["name"]) == ("small", "large")
    assert small["usage"]["completion_tokens"] > 0 and large["usage"]["completion_tokens"] > 0
    # each call priced on its own tokens, at its own model's prices
    assert small["cost"]["kind"] == large["cost"]["kind"] == "tokens"
    assert small["cost"]["usd"] == pytest.approx(priced(small["usage"], SMALL))
    assert large["cost"]["usd"] == pytest.approx(priced(large["usage"], LARGE))
    assert small["cost"]["rates"]["output_usd_per_mtok"] == 2.0
    assert not small["cost"]["estimated"]
    total = small["cost"]["usd"] + large["cost"]["usd"]
    assert float(answer.headers["x-tiergate-cost-usd"]) == pytest.approx(total, abs=1e-10)
    # the metrics: by route and model, both calls
    after = cost_metric(priced_gateway, "cascade", "small"), \
        cost_metric(priced_gateway, "cascade", "large")
    assert after[0] - before[0] == pytest.approx(small["cost"]["usd"])
    assert after[1] - before[1] == pytest.approx(large["cost"]["usd"])


def test_a_failed_escalation_is_recorded_with_its_small_call(
        priced_gateway: ServerProcess) -> None:
    """The large call fails after the small one answered: the client gets the error, and the
    small call is still recorded (its cost, the decision to escalate) and counted."""
    before = cost_metric(priced_gateway, "broken-cascade", "small")
    prompt = "hard puzzle number 25"
    failed = ask(priced_gateway, "broken-cascade", prompt)
    assert failed.status_code >= 500 and "x-tiergate-record-id" not in failed.headers
    usage = ask(priced_gateway, "small", prompt).json()["usage"]  # the same small call
    stored = record(priced_gateway, failed.headers["x-request-id"])  # its id: the request's
    assert stored["status"] == failed.status_code
    assert stored["decision"]["escalated"] and stored["decision"]["model"] == "broken"
    (small,) = stored["calls"]
    assert small["model"]["name"] == "small"
    assert small["cost"]["usd"] == pytest.approx(priced(usage, SMALL))
    assert cost_metric(priced_gateway, "broken-cascade", "small") - before == \
        pytest.approx(priced(usage, SMALL))
    record_id = failed.headers["x-request-id"]
    replayed = httpx.post(f"{priced_gateway.url}/admin/records/{record_id}/replay",
                          headers=HEADERS, timeout=30)
    assert replayed.status_code == 200
    assert replayed.json()["status"] == "refused"
    assert "broken, which never answered" in replayed.json()["reason"]


def test_a_streamed_cascade_records_both_calls_cost(priced_gateway: ServerProcess) -> None:
    with httpx.stream("POST", priced_gateway.url + "/v1/chat/completions", timeout=30, json={
            "model": "cascade", "stream": True,
            "messages": [{"role": "user", "content": "hard puzzle number 23"}]}) as response:
        assert "x-tiergate-cost-usd" not in response.headers  # headers go before the cost
        record_id = response.headers["x-tiergate-record-id"]
        lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    stored = record(priced_gateway, record_id)
    assert [c["model"]["name"] for c in stored["calls"]] == ["small", "large"]
    for call, prices in zip(stored["calls"], (SMALL, LARGE), strict=True):
        assert call["usage"]["completion_tokens"] > 0
        assert call["cost"]["usd"] == pytest.approx(priced(call["usage"], prices))
    # an accepted answer, verified before the stream began: one call, at its own time
    with httpx.stream("POST", priced_gateway.url + "/v1/chat/completions", timeout=30, json={
            "model": "cascade", "stream": True,
            "messages": [{"role": "user", "content": "easy sum number 27"}]}) as response:
        assert response.headers["x-tiergate-escalated"] == "false"
        record_id = response.headers["x-tiergate-record-id"]
        assert [line for line in response.iter_lines() if line][-1] == "data: [DONE]"
    (call,) = record(priced_gateway, record_id)["calls"]
    alone = ask(priced_gateway, "small", "easy sum number 27").json()["usage"]
    assert call["usage"]["completion_tokens"] == alone["completion_tokens"]
    assert call["cost"]["usd"] == pytest.approx(priced(alone, SMALL))
    assert call["cost"]["seconds"] == call["timing"]["total_s"] > 0


def test_a_stream_cut_mid_answer_accounts_what_was_generated(
        priced_gateway: ServerProcess) -> None:
    before = cost_metric(priced_gateway, "stall", "stall")
    body = {"model": "stall", "stream": True,
            "messages": [{"role": "user", "content": "a long answer please " * 4}]}
    with httpx.stream("POST", priced_gateway.url + "/v1/chat/completions", json=body,
                      timeout=30) as response:
        record_id = response.headers["x-tiergate-record-id"]
        events = response.iter_lines()
        received = [line for line in (next(events) for _ in range(6)) if line]
    # the client went away after 3 of the ~20 pieces: the gateway still accounts them
    assert len(received) == 3
    stored = record(priced_gateway, record_id)
    assert stored["status"] == 499 and stored["stream"] is True
    (call,) = stored["calls"]
    cost = call["cost"]
    assert cost["kind"] == "serving-time" and cost["estimated"] is True
    generated = call["usage"]["completion_tokens"]
    assert 3 <= generated < 20
    assert call["choices"][0]["text"].startswith("echo: a long")
    assert call["usage"]["prompt_tokens"] > 0  # estimated from the prompt's text
    assert cost["seconds"] == call["timing"]["total_s"] > 0
    assert cost["usd"] == pytest.approx(cost["seconds"] * 3600.0 / 3600 / 2.0)
    assert cost_metric(priced_gateway, "stall", "stall") - before == pytest.approx(cost["usd"])


def test_the_savings_report_adds_up_to_the_records(priced_gateway: ServerProcess,
                                                   config: dict[str, Any],
                                                   tmp_path: Path) -> None:
    since = time.time() - 0.001
    ids = [ask(priced_gateway, route, prompt).headers["x-tiergate-record-id"]
           for route, prompt in [("cascade", "easy sum number 31"),
                                 ("cascade", "hard puzzle number 33"),
                                 ("cascade", "easy sum number 35"), ("small", "direct"),
                                 ("large", "direct too")]]
    records = [record(priced_gateway, i) for i in ids]
    path = write_config(tmp_path / "tiergate.toml", config)
    run = subprocess.run(
        [sys.executable, "-m", "gateway", "report", "--config", str(path), "--since", str(since),
         "--sections", "savings", "--json", "--plot", str(tmp_path / "savings.png")],
        capture_output=True, text=True, cwd=REPO, timeout=120, env=dict(os.environ))
    assert run.returncode == 0, run.stderr
    savings = orjson.loads(run.stdout)["sections"]["savings"]
    in_window = [r for r in records if r["received_at"] >= since]
    assert len(in_window) == len(records) == savings["totals"]["requests"]
    usd = [c["cost"]["usd"] for r in records for c in r["calls"]]
    assert savings["totals"]["actual_usd"] == pytest.approx(sum(usd), rel=1e-12)
    assert savings["totals"]["calls"] == len(usd)
    routes = savings["routes"]
    assert sum(r["actual_usd"] for r in routes.values()) == \
        pytest.approx(savings["totals"]["actual_usd"], rel=1e-12)
    cascade = routes["cascade"]
    cascaded = [r for r in records if r["route"] == "cascade"]
    assert (cascade["requests"], cascade["escalated"]) == (3, 1)
    # always-small: every small call was made; always-large: the escalated call at what it cost,
    # the others' tokens at the large model's prices
    small_calls = [c for r in cascaded for c in r["calls"] if c["model"]["name"] == "small"]
    assert cascade["always_small_usd"] == pytest.approx(sum(c["cost"]["usd"]
                                                            for c in small_calls))
    large = sum(c["cost"]["usd"] for r in cascaded for c in r["calls"]
                if c["model"]["name"] == "large")
    large += sum(priced(r["calls"][-1]["usage"], LARGE) for r in cascaded
                 if len(r["calls"]) == 1)
    assert cascade["always_large_usd"] == pytest.approx(large)
    assert cascade["actual_usd"] < cascade["always_large_usd"]
    assert (tmp_path / "savings.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the admin API gives the same figures
    admin = httpx.get(priced_gateway.url + "/admin/savings", headers=HEADERS,
                      params={"since": str(since), "route": "cascade"}).json()
    assert admin["routes"]["cascade"]["actual_usd"] == pytest.approx(cascade["actual_usd"])
    assert admin["routes"]["cascade"]["always_large_usd"] == \
        pytest.approx(cascade["always_large_usd"])
    assert list(admin["routes"]) == ["cascade"]
