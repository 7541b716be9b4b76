"""The registry's history file: which tuple served when, looked up by name or digest."""

from __future__ import annotations

import stat
from pathlib import Path

from gateway.governance.history import ServingHistory

DIGEST_A = "sha256:" + "ab12" * 16
DIGEST_B = "sha256:" + "cd34" * 16


def test_servings_and_tuples_are_kept_and_found_by_name_or_digest(tmp_path: Path) -> None:
    history = ServingHistory(tmp_path / "registry" / "registry.sqlite3")
    first = history.started("small", {"name": "small", "v": 1}, DIGEST_A, "host:1", "gated",
                            [{"gate": "evaluated", "passed": True, "detail": "ok"}], "team-a",
                            "eval-1", None, now=100.0)
    history.started("small", {"name": "small", "v": 2}, DIGEST_B, "host:2", "refused",
                    [{"gate": "evaluated", "passed": False, "detail": "no eval"}], "team-a",
                    None, None, now=200.0)
    history.seen([first], now=150.0)

    by_name = history.servings("small")
    assert [(s.digest, s.status) for s in by_name] == [(DIGEST_B, "refused"), (DIGEST_A, "gated")]
    assert by_name[1].last_seen == 150.0 and by_name[1].gates[0]["passed"] is True
    # as headers show a digest (12 hex digits) and as records carry it
    assert [s.digest for s in history.servings(DIGEST_A[7:19])] == [DIGEST_A]
    assert [s.digest for s in history.servings(DIGEST_B)] == [DIGEST_B]
    assert history.tuple_of(DIGEST_B[7:19]) == {"name": "small", "v": 2}
    # a name made of hex letters is a name, not a digest prefix
    assert history.servings("abcdef") == [] and history.tuple_of("small") is None
    assert stat.S_IMODE((tmp_path / "registry").stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "registry" / "registry.sqlite3").stat().st_mode) == 0o600


def test_the_last_evaluation_wins(tmp_path: Path) -> None:
    history = ServingHistory(tmp_path / "registry.sqlite3")
    assert history.last_evaluated(DIGEST_A) is None
    history.evaluated(DIGEST_A, 100.0, "eval", "eval-1")
    history.evaluated(DIGEST_A, 300.0, "canary", "run-2")
    history.evaluated(DIGEST_A, 100.0, "eval", "eval-1")  # seen again at the next start
    history.evaluated(DIGEST_B, 500.0, "eval", "eval-9")
    assert history.last_evaluated(DIGEST_A) == (300.0, "canary")
