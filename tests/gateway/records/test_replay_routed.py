"""Replaying routed requests re-runs the decision with the recorded verifier and threshold."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from gateway.cli.main import main
from tests.conftest import GatewayFactory, ServerProcess, upstream_model, write_config
from tests.router.test_routing import manifest_sha256
from verifiers.training import train_artifact

PIN = "12" * 32


def rows(kind: str) -> list[dict[str, Any]]:
    """Easy prompts the small model gets right, hard ones only the large model."""
    out = []
    for i in range(160):
        hard = i % 2 == 1
        prompt = f"{'hard puzzle' if hard else 'easy sum'} number {i}"
        row: dict[str, Any] = {"id": f"r{i}", "slice": "synthetic", "small_correct": not hard,
                               "large_correct": True,
                               "request": {"messages": [{"role": "user", "content": prompt}]}}
        if kind == "answer":
            row["small"] = {"text": f"echo: {prompt}"}
        out.append(row)
    return out


@pytest.fixture(scope="module")
def routed(gateway_factory: GatewayFactory, upstream: ServerProcess,
           tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], dict[str, str]]:
    base = tmp_path_factory.mktemp("routed-records")
    verifiers = {}
    for kind in ("prompt", "answer"):
        data = base / f"{kind}.jsonl"
        data.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows(kind)))
        train_artifact(data, kind, base / kind, target="small-wrong")
        verifiers[kind] = str(base / kind)
    sections: dict[str, Any] = {
        "models.small": upstream_model(upstream, "echo", weights_sha256=PIN),
        "models.large": upstream_model(upstream, "echo", weights_sha256=PIN),
        "routes.auto": {"mode": "prompt", "small": "small", "large": "large",
                        "verifier": verifiers["prompt"], "threshold": 0.5,
                        "verifier_sha256": manifest_sha256(Path(verifiers["prompt"]))},
        "routes.cascade": {"mode": "cascade", "small": "small", "large": "large",
                           "verifier": verifiers["answer"], "threshold": 0.5,
                           "verifier_sha256": manifest_sha256(Path(verifiers["answer"]))},
        "records": {"sqlite_path": str(base / "records.sqlite3"),
                    "spool_dir": str(base / "spool"), "flush_interval_s": 0.01},
        "base": {"dir": str(base)},
    }
    gateway = gateway_factory({k: v for k, v in sections.items() if k != "base"})
    ids = {}
    for route in ("auto", "cascade"):
        for level in ("easy sum", "hard puzzle"):
            response = httpx.post(gateway.url + "/v1/chat/completions", timeout=30, json={
                "model": route, "temperature": 0.5,
                "messages": [{"role": "user", "content": f"{level} number 1001"}]})
            assert response.status_code == 200, response.text
            ids[f"{route} {level}"] = response.headers["x-tiergate-record-id"]
    # The Responses API is recorded, routed and replayed as chat.
    response = httpx.post(gateway.url + "/v1/responses", timeout=30, json={
        "model": "cascade", "temperature": 0.5, "input": "hard puzzle number 1002"})
    assert response.status_code == 200, response.text
    ids["responses: cascade hard puzzle"] = response.headers["x-tiergate-record-id"]
    gateway.stop()  # SIGTERM: every record delivered
    return sections, ids


def replay(sections: dict[str, Any], record_id: str, capsys: pytest.CaptureFixture[str],
           **changes: Any) -> tuple[int, dict[str, Any]]:
    config = write_config(Path(sections["base"]["dir"]) / "cli.toml",
                          {k: v for k, v in {**sections, **changes}.items() if k != "base"})
    code = main(["replay", record_id, "--json", "--config", str(config)])
    return code, orjson.loads(capsys.readouterr().out)


def test_decisions_replay_identical(routed: tuple[dict[str, Any], dict[str, str]],
                                    capsys: pytest.CaptureFixture[str]) -> None:
    sections, ids = routed
    for name, record_id in ids.items():
        code, report = replay(sections, record_id, capsys)
        assert code == 0 and report["status"] == "identical", (name, report)
        decision = report["decision"]
        assert decision["status"] == "identical", (name, decision)
        assert decision["replayed"]["feature_digest"] == decision["recorded"]["feature_digest"]
        escalated = decision["recorded"]["escalated"]
        assert escalated == name.endswith("hard puzzle"), (name, decision)
        # A cascade that escalated re-decodes the rejected small answer too.
        calls = [c["model"] for c in report["calls"]]
        assert calls == (["small", "large"] if name.endswith("cascade hard puzzle")
                         else ["large"] if name == "auto hard puzzle" else ["small"]), calls


def test_a_decision_whose_verifier_is_gone_is_not_rerun(
        routed: tuple[dict[str, Any], dict[str, str]],
        capsys: pytest.CaptureFixture[str]) -> None:
    sections, ids = routed
    code, report = replay(sections, ids["auto hard puzzle"], capsys,
                          **{"routes.auto": {"mode": "fixed", "small": "small",
                                             "large": "large", "tier": "large"}})
    assert code == 0 and report["decision"]["status"] == "not-run"
    assert "no verifier configured for route 'auto'" in report["decision"]["reason"]


def test_a_tampered_score_is_a_changed_decision(
        routed: tuple[dict[str, Any], dict[str, str]],
        capsys: pytest.CaptureFixture[str]) -> None:
    """A record whose stored decision differs from what its verifier says (the store written
    directly, links recomputed) replays as diverged."""
    from gateway.records.chain import content_sha256, link_digest

    sections, ids = routed
    store = Path(sections["records"]["sqlite_path"])
    copy = store.with_name("forged.sqlite3")
    with sqlite3.connect(store) as src, sqlite3.connect(copy) as dst:
        src.backup(dst)
        rows_ = dst.execute("SELECT seq, record_id, prev_digest, stored_at, body FROM records "
                            "ORDER BY seq").fetchall()
        prev = None
        for seq, record_id, prev_digest, stored_at, body in rows_:
            if record_id == ids["auto easy sum"]:
                data = orjson.loads(body)
                data["decision"]["score"] = 0.99
                body = orjson.dumps(data, option=orjson.OPT_SORT_KEYS)
            prev = prev or prev_digest
            digest = link_digest("main", seq, record_id, prev, content_sha256(body), stored_at)
            dst.execute("UPDATE records SET body = ?, prev_digest = ?, digest = ? WHERE seq = ?",
                        (body, prev, digest, seq))
            prev = digest
    code, report = replay(sections, ids["auto easy sum"], capsys,
                          records={**sections["records"], "sqlite_path": str(copy)})
    assert code == 1 and report["status"] == "diverged"
    assert report["decision"]["status"] == "changed"
    assert all(c["status"] == "identical" for c in report["calls"])
