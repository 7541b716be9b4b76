"""The report's governance numbers from a real history file, records and canary store: a record
counts as covered by what its tuple was *when the request came* (gated, evaluated within its
period), tuples by their latest start in the window, drift catches by when they were raised."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import orjson

from canary.drift import DriftConfig, plan_streams
from canary.pins import Pin
from canary.state import Alarm, FileCanaryStore, ModelState
from gateway.governance.history import ServingHistory
from gateway.governance.numbers import DAY_S, GovernanceTally, Window
from gateway.kernel.modeltuple import ModelTuple

GATED = "sha256:" + "ab12" * 16
NEW = "sha256:" + "cd34" * 16
OK = [{"gate": "evaluated", "passed": True, "detail": "ok"}]
FAILED = [{"gate": "evaluated", "passed": False, "detail": "no eval"}]


def history(tmp_path: Path) -> ServingHistory:
    """``small`` served GATED from day 0 (evaluated on day 0, a 10-day period), then from day
    20 a new tuple NEW on an override; ``large`` refused on day 5."""
    kept = ServingHistory(tmp_path / "registry.sqlite3")
    first = kept.started("small", {}, GATED, "host:1", "gated", OK, "team", "e1", None, now=0.0)
    kept.evaluated(GATED, 0.0, "eval", "e1")
    kept.seen([first], now=19 * DAY_S)
    kept.started("small", {}, NEW, "host:1", "overridden", FAILED, "team", None, "TICKET-1",
                 now=20 * DAY_S)
    kept.started("large", {}, GATED, "host:1", "refused", FAILED, None, None, None,
                 now=5 * DAY_S)
    return kept


def record(name: str, digest: str, day: float) -> bytes:
    return orjson.dumps({"received_at": day * DAY_S,
                         "calls": [{"model": {"name": name}, "tuple_digest": digest}]})


async def feed(tally: GovernanceTally, bodies: list[bytes]) -> None:
    async def each() -> AsyncIterator[bytes]:
        for body in bodies:
            yield body

    await tally.records(each())


def test_traffic_is_covered_by_what_its_tuple_was_when_the_request_came(tmp_path: Path) -> None:
    tally = GovernanceTally(history(tmp_path), {"small": 10.0}, 90.0, Window(None, 25 * DAY_S))
    tally.tuples()
    asyncio.run(feed(tally, [
        record("small", GATED, 3),  # gated, evaluated 3 days before: covered
        record("small", GATED, 12),  # the same tuple, 12 days after its eval: stale then
        record("small", NEW, 21),  # the overridden tuple
        record("other", GATED, 4),  # a name the history never saw serving
        orjson.dumps({"received_at": 4 * DAY_S, "calls": []}),  # refused before any call
    ]))
    numbers = tally.numbers.to_json()
    traffic = numbers["coverage"]["traffic"]
    assert (traffic["current"], traffic["of"], traffic["records"]) == (1, 4, 5)
    assert (traffic["unanswered"], traffic["unknown_tuple"]) == (1, 1)
    by_key = {(t["name"], t["digest"]): t for t in numbers["tuples"]}
    assert set(by_key) == {("small", GATED), ("small", NEW), ("large", GATED)}
    assert by_key[("small", GATED)]["stale"] is True  # at the window's end, 25 days on
    assert by_key[("small", NEW)]["failed_gates"] == ["evaluated"]
    assert numbers["coverage"]["tuples"] == {"current": 0, "of": 3, "share": 0.0}
    assert numbers["coverage"]["owners"]["with_owner"] == 2
    assert numbers["refused"] == ["large"] and numbers["overridden"] == ["small"]
    assert numbers["stale"] == ["small", "small"]


def test_a_window_keeps_the_starts_serving_in_it(tmp_path: Path) -> None:
    tally = GovernanceTally(history(tmp_path), {"small": 10.0}, 90.0,
                            Window(5 * DAY_S, 9 * DAY_S))
    tally.tuples()
    numbers = tally.numbers.to_json()
    # small's first start (seen until day 19) and large's (its latest start): not NEW (day 20)
    assert [(t["name"], t["digest"], t["current"]) for t in numbers["tuples"]] == \
        [("large", GATED, False), ("small", GATED, True)]
    assert numbers["coverage"]["tuples"]["share"] == 0.5


def test_drift_catches_are_the_alarms_raised_in_the_window(tmp_path: Path) -> None:
    store = FileCanaryStore(tmp_path / "canary")
    drift = plan_streams({"easy": (3, 3)}, DriftConfig())
    model = ModelTuple(name="small", engine="test")
    pin = Pin(model="small", version=1, created_at=0.0, model_tuple=model,
              tuple_digest=model.digest(), set_path="set.jsonl", set_sha256="0" * 64, golden=[])
    past = Alarm(raised_at=2 * DAY_S, source="canary", summary="easy fell", acknowledged_at=3.0)
    standing = Alarm(raised_at=8 * DAY_S, source="shadow", summary="shadow drift")
    state = ModelState(model="small", pin_version=1, drift=drift, alarm=standing,
                       past_alarms=[past])

    async def fill() -> None:
        await store.put_pin(pin)
        await store.put_state(state)

    asyncio.run(fill())
    tally = GovernanceTally(history(tmp_path), {}, 90.0, Window(5 * DAY_S, 9 * DAY_S))
    asyncio.run(tally.drift(store))
    catches = tally.numbers.to_json()["drift_catches"]
    assert [(c["model"], c["source"], c["summary"]) for c in catches] == \
        [("small", "shadow", "shadow drift")]

    (tmp_path / "canary" / "small" / "state.json").write_text("not json")
    unreadable = GovernanceTally(history(tmp_path), {}, 90.0, Window(None, 9 * DAY_S))
    asyncio.run(unreadable.drift(store))
    assert unreadable.numbers.drift_catches is None
    assert unreadable.numbers.drift_error is not None
    assert unreadable.numbers.drift_error.startswith("the canary store is not readable: ")
