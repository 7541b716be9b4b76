"""Routes end to end: trained verifiers decide, headers say so, thresholds change live across
two real gateway processes that share a real Redis."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from gateway.http.auth import hash_key
from tests.conftest import GatewayFactory, RedisProcess, ServerProcess, upstream_model
from verifiers.training import train_artifact

ADMIN = "admin-secret"
ADMIN_HEADERS = {"authorization": f"Bearer {ADMIN}"}


def training_rows(kind: str) -> list[dict[str, Any]]:
    """Easy prompts the small model gets right; hard ones only the large model gets right."""
    rows = []
    for i in range(240):
        hard = i % 2 == 1
        prompt = f"{'hard puzzle' if hard else 'easy sum'} number {i}"
        row: dict[str, Any] = {"id": f"r{i}", "request": {"messages": [
            {"role": "user", "content": prompt}]}, "small_correct": not hard,
            "large_correct": True, "slice": "synthetic"}
        if kind == "answer":
            row["small"] = {"text": f"echo: {prompt}"}
        rows.append(row)
    return rows


@pytest.fixture(scope="module")
def verifier_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("verifiers")
    out = {}
    for kind in ("prompt", "answer"):
        data = base / f"{kind}.jsonl"
        data.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in training_rows(kind)))
        train_artifact(data, kind, base / kind, target="small-wrong")  # type: ignore[arg-type]
        out[kind] = base / kind
    return out


def manifest_sha256(artifact: Path) -> str:
    """The pin of a trained artifact (its manifest's ``sha256``)."""
    sha256: str = orjson.loads((artifact / "manifest.json").read_bytes())["sha256"]
    return sha256


def sections(upstream: ServerProcess, verifiers: dict[str, Path]) -> dict[str, dict[str, Any]]:
    return {
        "models.small": upstream_model(upstream, "echo"),
        "models.large": upstream_model(upstream, "echo"),
        "routes.auto": {"mode": "prompt", "small": "small", "large": "large",
                        "verifier": str(verifiers["prompt"]), "threshold": 0.5,
                        "verifier_sha256": manifest_sha256(verifiers["prompt"])},
        "routes.cascade": {"mode": "cascade", "small": "small", "large": "large",
                           "verifier": str(verifiers["answer"]), "threshold": 0.5,
                           "verifier_sha256": manifest_sha256(verifiers["answer"])},
        "routes.always-large": {"mode": "fixed", "small": "small", "large": "large",
                                "tier": "large"},
        "auth": {"admin_keys": [{"id": "sre", "sha256": hash_key(ADMIN)}]},
    }


def ask(gateway: ServerProcess, route: str, prompt: str, **extra: Any) -> httpx.Response:
    return httpx.post(gateway.url + "/v1/chat/completions", timeout=30, json={
        "model": route, "messages": [{"role": "user", "content": prompt}], **extra})


@pytest.fixture(scope="module")
def routed(gateway_factory: GatewayFactory, upstream: ServerProcess,
           verifier_dirs: dict[str, Path]) -> ServerProcess:
    return gateway_factory(sections(upstream, verifier_dirs))


@pytest.mark.parametrize("route", ["auto", "cascade"])
def test_verifier_routes_hard_prompts_to_the_large_model(routed: ServerProcess,
                                                         route: str) -> None:
    easy, hard = ask(routed, route, "easy sum number 7"), ask(routed, route, "hard puzzle number 8")
    assert easy.status_code == hard.status_code == 200
    assert easy.headers["x-tiergate-route"] == route
    assert easy.headers["x-tiergate-escalated"] == "false"
    assert easy.headers["x-tiergate-model"].startswith("small@")
    assert easy.json()["model"] == "small"
    assert hard.headers["x-tiergate-escalated"] == "true"
    assert hard.headers["x-tiergate-model"].startswith("large@")
    assert float(hard.headers["x-tiergate-score"]) >= 0.5 > float(easy.headers["x-tiergate-score"])
    assert hard.json()["choices"][0]["message"]["content"] == "echo: hard puzzle number 8"


def test_cascade_streams_the_verified_answer(routed: ServerProcess) -> None:
    for prompt, tier in (("easy sum number 3", "small"), ("hard puzzle number 5", "large")):
        with httpx.stream("POST", routed.url + "/v1/chat/completions", timeout=30, json={
                "model": "cascade", "stream": True, "stream_options": {"include_usage": True},
                "messages": [{"role": "user", "content": prompt}]}) as response:
            assert response.headers["x-tiergate-model"].startswith(f"{tier}@")
            events = [orjson.loads(line[6:]) for line in response.iter_lines()
                      if line.startswith("data: {")]
        text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events
                       if e["choices"])
        assert text == f"echo: {prompt}"
        assert events[-1]["usage"]["completion_tokens"] > 0
        assert all(e["choices"][0]["logprobs"] is None for e in events if e["choices"])


def test_fixed_route_and_models_list(routed: ServerProcess) -> None:
    response = ask(routed, "always-large", "easy sum number 1")
    assert response.headers["x-tiergate-model"].startswith("large@")
    assert "x-tiergate-score" not in response.headers
    cards = {c["id"]: c["tiergate"] for c in httpx.get(routed.url + "/v1/models").json()["data"]}
    assert cards["auto"]["kind"] == "route" and cards["auto"]["mode"] == "prompt"
    assert cards["auto"]["verifier_id"].startswith("vrf-") and cards["auto"]["threshold"] == 0.5
    assert cards["small"]["kind"] == "model"


def test_threshold_admin_api(routed: ServerProcess) -> None:
    url = routed.url + "/admin/routes/auto/threshold"
    assert httpx.get(url).status_code == 401
    assert httpx.get(url, headers={"authorization": "Bearer wrong"}).status_code == 401
    assert httpx.get(url, headers=ADMIN_HEADERS).json()["threshold"] == 0.5
    bad = httpx.put(url, headers=ADMIN_HEADERS, json={"threshold": 7})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "threshold"
    assert httpx.put(routed.url + "/admin/routes/nope/threshold", headers=ADMIN_HEADERS,
                     json={"threshold": 0.5}).status_code == 404
    try:
        put = httpx.put(url, headers=ADMIN_HEADERS, json={"threshold": 1.0})
        assert put.status_code == 200 and put.json()["threshold"] == 1.0
        # Nothing scores >= 1.0: the hard prompt now stays on the small model.
        assert ask(routed, "auto", "hard puzzle number 9").headers["x-tiergate-escalated"] == \
            "false"
    finally:
        httpx.put(url, headers=ADMIN_HEADERS, json={"threshold": 0.5})


def test_threshold_reload_across_replicas(gateway_factory: GatewayFactory,
                                          upstream: ServerProcess, redis_server: RedisProcess,
                                          verifier_dirs: dict[str, Path]) -> None:
    config = sections(upstream, verifier_dirs)
    a = gateway_factory(config, env={"TIERGATE_REDIS_URL": redis_server.url})
    b = gateway_factory(config, env={"TIERGATE_REDIS_URL": redis_server.url})
    try:
        assert ask(b, "auto", "hard puzzle number 11").headers["x-tiergate-escalated"] == "true"
        httpx.put(a.url + "/admin/routes/auto/threshold", headers=ADMIN_HEADERS,
                  json={"threshold": 1.0})
        deadline = time.monotonic() + 60  # a hang guard: the change arrives by pub/sub
        while httpx.get(b.url + "/admin/routes/auto/threshold",
                        headers=ADMIN_HEADERS).json()["threshold"] != 1.0:
            assert time.monotonic() < deadline, "the change never reached replica b"
            time.sleep(0.02)
        assert ask(b, "auto", "hard puzzle number 11").headers["x-tiergate-escalated"] == "false"
    finally:
        httpx.put(a.url + "/admin/routes/auto/threshold", headers=ADMIN_HEADERS,
                  json={"threshold": 0.5})
        a.stop()
        b.stop()


def tokens_of(gateway: ServerProcess, model: str) -> tuple[float, float]:
    """``tiergate_tokens_total`` of ``model``: (in, out); 0 before its first call."""
    text = httpx.get(gateway.url + "/metrics").text
    counts = []
    for direction in ("in", "out"):
        found = [line for line in text.splitlines() if line.startswith("tiergate_tokens_total{")
                 and f'model="{model}"' in line and f'direction="{direction}"' in line]
        counts.append(float(found[0].rsplit(" ", 1)[1]) if found else 0.0)
    return counts[0], counts[1]


def test_an_escalated_cascade_reports_and_counts_both_calls(routed: ServerProcess) -> None:
    prompt = "hard puzzle number 11"
    alone = ask(routed, "always-large", prompt).json()["usage"]
    before = tokens_of(routed, "small"), tokens_of(routed, "large")
    escalated = ask(routed, "cascade", prompt)
    assert escalated.headers["x-tiergate-escalated"] == "true"
    # The usage the client is billed for: the small answer's tokens and the large one's.
    usage = escalated.json()["usage"]
    assert usage["prompt_tokens"] == 2 * alone["prompt_tokens"]
    assert usage["completion_tokens"] == 2 * alone["completion_tokens"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    after = tokens_of(routed, "small"), tokens_of(routed, "large")
    for model in (0, 1):  # metrics count each model's own call
        assert after[model][0] - before[model][0] == alone["prompt_tokens"]
        assert after[model][1] - before[model][1] == alone["completion_tokens"]
    with httpx.stream("POST", routed.url + "/v1/chat/completions", timeout=30, json={
            "model": "cascade", "stream": True, "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": prompt}]}) as response:
        events = [orjson.loads(line[6:]) for line in response.iter_lines()
                  if line.startswith("data: {")]
    assert events[-1]["usage"] == usage
    accepted = ask(routed, "cascade", "easy sum number 11")
    assert accepted.headers["x-tiergate-escalated"] == "false"
    assert accepted.json()["usage"] == ask(routed, "small", "easy sum number 11").json()["usage"]


def test_responses_are_routed_like_chat(routed: ServerProcess) -> None:
    def respond(route: str, prompt: str) -> httpx.Response:
        return httpx.post(routed.url + "/v1/responses", timeout=30,
                          json={"model": route, "input": prompt})

    alone = respond("always-large", "hard puzzle number 12").json()["usage"]
    for prompt, tier in (("easy sum number 12", "small"), ("hard puzzle number 12", "large")):
        response = respond("cascade", prompt)
        assert response.status_code == 200, response.text
        assert response.headers["x-tiergate-route"] == "cascade"
        assert response.headers["x-tiergate-model"].startswith(f"{tier}@")
        body = response.json()
        assert body["model"] == tier and body["output"][0]["content"][0]["text"] == \
            f"echo: {prompt}"
        assert body["output"][0]["content"][0]["logprobs"] == []  # the cascade's own
    assert body["usage"]["input_tokens"] == 2 * alone["input_tokens"]
    assert body["usage"]["output_tokens"] == 2 * alone["output_tokens"]
