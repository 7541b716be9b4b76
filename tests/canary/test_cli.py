"""``tiergate canary pin|run|status|ack|unpin`` end to end on the reference models: the same
model passes (exit 0), ref-small served under ref-large's name is drift (exit 1), status reads
per slice, ack ends the rollback, unpin drops the pin; errors are one line with exit 2."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from gateway.cli.main import main
from tests.conftest import REPO, write_config

MODELS = REPO / "gateway" / "reference" / "models"
pytestmark = pytest.mark.slow


def config(tmp_path: Path, served: str) -> Path:
    """ref-large as configured; ``served`` is what its path really holds."""
    return write_config(tmp_path / f"{served}.toml", {
        "canary": {"dir": str(tmp_path / "canary")},
        "canary.models.ref-large": {"pinned": "ref-large-pinned", "rollback": True},
        "models.ref-large": {"backend": "engine", "path": str(MODELS / served), "threads": 1},
        "models.ref-large-pinned": {"backend": "engine", "path": str(MODELS / "ref-large"),
                                    "threads": 1},
    })


def test_pin_run_status_ack_unpin(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good, swapped = config(tmp_path, "ref-large"), config(tmp_path, "ref-small")

    assert main(["canary", "pin", "ref-large", "--config", str(good)]) == 0
    out = capsys.readouterr().out
    assert "pinned ref-large v1: tuple sha256:" in out and "99 items" in out
    assert "add/3" in out

    assert main(["canary", "run", "--config", str(good)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("ref-large: ok") and "ALL" in out and "100.0%" in out

    assert main(["canary", "run", "ref-large", "--json", "--config", str(swapped)]) == 1
    [run] = orjson.loads(capsys.readouterr().out)
    assert run["status"] == "drift" and run["tuple_changes"]["base_weights_sha256"]
    assert {a["stream"] for a in run["new_alarms"]} >= {"agreement"}

    assert main(["canary", "status", "--config", str(swapped)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("ref-large: DRIFT")
    for needle in ("pinned    v1", "rollback  on drift, to ref-large-pinned", "sort/10",
                   "golden", "agreement", "ALARM     raised",
                   "goes to ref-large-pinned until: tiergate canary ack ref-large"):
        assert needle in out, needle

    assert main(["canary", "ack", "ref-large", "--by", "sre", "--config", str(good)]) == 0
    assert "acknowledged; rollback ended" in capsys.readouterr().out
    assert main(["canary", "status", "ref-large", "--json", "--config", str(good)]) == 0
    [status] = orjson.loads(capsys.readouterr().out)
    assert status["status"] == "ok" and status["rollback_to"] is None
    assert status["state"]["past_alarms"][0]["acknowledged_by"] == "sre"

    assert main(["canary", "unpin", "ref-large", "--config", str(good)]) == 0
    capsys.readouterr()
    assert main(["canary", "status", "--config", str(good)]) == 0
    assert "no pinned models" in capsys.readouterr().out


@pytest.mark.parametrize(("args", "needle"), [
    (["canary", "ack", "ref-large"], "'ref-large' is not pinned"),
    (["canary", "unpin", "ref-large"], "'ref-large' is not pinned"),
    (["canary", "run", "ghost"], "'ghost' is not configured"),
    (["canary", "pin", "ref-large", "--set", "/nonexistent.jsonl"], "cannot read task set"),
])
def test_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                             args: list[str], needle: str) -> None:
    assert main([*args, "--config", str(config(tmp_path, "ref-large"))]) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1 and err.startswith("tiergate: ")
