"""``tiergate report`` against the gated gateway after it answered requests: its governance
counts are what the registry history and the records store hold."""

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

from gateway.cli.main import main
from tests.conftest import REPO, write_config
from tests.gateway.governance.conftest import ADMIN, Gated, complete, sections

HEADERS = {"authorization": f"Bearer {ADMIN}"}
SENT = {"ref-large": 2, "ref-large-stale": 1, "ref-small-overridden": 1,
        "ref-small-fallback": 1, "ref-small-refused": 1}


def tiergate(refusing: Gated, tmp_path: Path, *argv: str) -> str:
    config = write_config(tmp_path / "tiergate.toml", sections(tmp_path))
    run = subprocess.run([sys.executable, "-m", "gateway", *argv, "--config", str(config)],
                         capture_output=True, text=True, cwd=REPO, timeout=120,
                         env={**os.environ, **refusing.env})
    assert run.returncode == 0, run.stderr
    return run.stdout


def serve_requests(refusing: Gated) -> tuple[float, list[str]]:
    """Requests to each model; their record ids, once the store holds them all."""
    server = refusing.server
    since = time.time()
    ids = []
    for model, count in SENT.items():
        for _ in range(count):
            answer = complete(server, model)
            assert answer.status_code == (503 if model == "ref-small-refused" else 200)
            if "x-tiergate-record-id" in answer.headers:
                ids.append(answer.headers["x-tiergate-record-id"])
    for _ in range(400):  # the delivery process writes within a few flush intervals
        stored = httpx.get(server.url + "/admin/records", headers=HEADERS,
                           params={"since": str(since), "limit": 1000}).json()["data"]
        if {r["record_id"] for r in stored} >= set(ids):
            break
        time.sleep(0.05)
    return since, ids


def test_the_governance_numbers_are_the_stores_counts(refusing: Gated, tmp_path: Path) -> None:
    pinned = httpx.post(refusing.server.url + "/admin/canary/ref-large/pin", headers=HEADERS,
                        timeout=300)  # the canary store exists: drift catches are readable
    assert pinned.status_code == 200, pinned.text
    since, ids = serve_requests(refusing)
    exported = tiergate(refusing, tmp_path, "records", "export", "--since", str(since))
    records: list[dict[str, Any]] = [orjson.loads(line) for line in exported.splitlines()]
    assert {r["record_id"] for r in records} >= set(ids) and len(ids) >= 5
    answered = [r for r in records if r["calls"]]
    # gated and current: ref-large (also answering ref-small-fallback's requests); ref-large-stale
    # (same tuple, a period of 0.09 s) and the override are not
    current = [r for r in answered if r["calls"][-1]["model"]["name"] == "ref-large"]
    assert (len(answered), len(current)) == (5, 3)

    body = orjson.loads(tiergate(refusing, tmp_path, "report", "--since", str(since),
                                 "--json"))
    numbers = body["sections"]["governance"]
    traffic = numbers["coverage"]["traffic"]
    assert (traffic["records"], traffic["of"], traffic["current"]) == \
        (len(records), len(answered), len(current))
    assert traffic["unknown_tuple"] == 0
    assert numbers["coverage"]["tuples"]["current"] == 1
    assert numbers["coverage"]["tuples"]["of"] == 5
    assert numbers["coverage"]["owners"]["with_owner"] == 2
    assert numbers["stale"] == ["ref-large-stale", "ref-small-overridden"]
    assert numbers["refused"] == ["ref-small-fallback", "ref-small-refused"]
    assert numbers["overridden"] == ["ref-small-overridden"]
    assert numbers["drift_catches"] == [] and numbers["drift_error"] is None

    text = tiergate(refusing, tmp_path, "report", "--since", str(since))
    assert f"eval coverage, traffic  {len(current)}/{len(answered)} (60.0%)" in text
    assert f"({len(records)} records in the window: {len(answered)} answered" in text
    assert "eval coverage, tuples   1/5 (20.0%)" in text
    assert "ref-small-overridden (evaluated, quantized): TICKET-42: eval pending" in text
    assert "drift catches           0 canary alarms raised in the window" in text


def test_a_section_without_its_source_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "registry.sqlite3"
    monkeypatch.setenv("TIERGATE_GOVERNANCE__HISTORY_PATH", str(missing))
    model = {"backend": "http", "base_url": "http://127.0.0.1:9/v1"}  # never loaded
    store = tmp_path / "records.sqlite3"  # not made: the report only reads
    config = write_config(tmp_path / "tiergate.toml", {"models.echo": model,
                                                       "records": {"sqlite_path": str(store)}})
    assert main(["report", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("report window: the first record .. ")
    assert f"governance\n  not available: no registry history (governance.history_path " \
           f"{missing} does not exist)" in out
    assert f"savings\n  not available: no record store at {store}" in out
    assert not store.exists()
    assert main(["report", "--since", "yesterday", "--config", str(config)]) == 2
    assert "tiergate: --since: not a time: 'yesterday'" in capsys.readouterr().err
