"""The admin audit trail: threshold changes, pins, acknowledgements and key changes written with
the admin key's id as the actor, read back newest first through ``GET /admin/audit/events``, and
kept in the registry history file (read again by a gateway started later on it)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from gateway.governance.events import SqliteEventLog
from tests.conftest import PostgresServer
from tests.gateway.http.admin.conftest import ADMIN, Admin, reference_settings, serve

module_loop = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def directory(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("admin-events")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def admin(directory: Path) -> AsyncIterator[Admin]:
    settings = reference_settings(directory, shadow={}, keys={
        "store": "sqlite", "sqlite_path": str(directory / "keys.sqlite3")})
    async with serve(settings) as served:
        yield served


async def events(admin: Admin, **params: object) -> list[dict[str, object]]:
    reply = await admin.client.get("/admin/audit/events", headers=ADMIN, params=params)
    assert reply.status_code == 200, reply.text
    data: list[dict[str, object]] = reply.json()["data"]
    return data


@module_loop
async def test_threshold_changes_are_in_the_trail(admin: Admin) -> None:
    assert await events(admin, kind="threshold") == []
    first = await admin.client.put("/admin/routes/auto/threshold", headers=ADMIN,
                                   json={"threshold": 0.3, "reason": "escalating too much"})
    assert first.status_code == 200, first.text
    second = await admin.client.put("/admin/routes/auto/threshold", headers=ADMIN,
                                    json={"threshold": 0.2})
    assert second.status_code == 200, second.text
    # refused changes write nothing
    bad = await admin.client.put("/admin/routes/auto/threshold", headers=ADMIN,
                                 json={"threshold": 0.4, "reason": 12})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "reason"
    out_of_range = await admin.client.put("/admin/routes/auto/threshold", headers=ADMIN,
                                          json={"threshold": 7})
    assert out_of_range.status_code == 400
    assert admin.state.router is not None and admin.state.router.thresholds.get("auto") == 0.2
    trail = await events(admin, kind="threshold", route="auto")
    replica = admin.state.tuples.replica
    assert [(e["before"], e["after"], e["reason"]) for e in trail] == [
        (0.3, 0.2, None), (0.094, 0.3, "escalating too much")]
    for entry in trail:
        assert (entry["kind"], entry["target"], entry["actor"], entry["replica"]) == (
            "threshold", "auto", "sre-alice", replica)
    first_at, second_at = trail[1]["at"], trail[0]["at"]
    assert isinstance(first_at, float) and isinstance(second_at, float)
    assert first_at <= second_at
    assert [e["id"] for e in await events(admin, kind="threshold", limit=1)] == [trail[0]["id"]]
    # durable: the registry history file holds them for any later reader
    history = admin.state.settings.governance.history_path
    assert history is not None and admin.state.events.where == f"the registry history {history}"
    stored = await SqliteEventLog(history).list(kind="threshold")
    assert [e.to_json() for e in stored] == trail
    assert await events(admin, route="elsewhere") == []


@module_loop
async def test_pins_acks_and_keys_are_in_the_trail(admin: Admin) -> None:
    pinned = await admin.client.post("/admin/canary/ref-large/pin", headers=ADMIN)
    assert pinned.status_code == 200, pinned.text
    acked = await admin.client.post("/admin/canary/ref-large/ack", headers=ADMIN,
                                    json={"by": "alice"})
    assert acked.status_code == 200, acked.text
    unpinned = await admin.client.delete("/admin/canary/ref-large/pin", headers=ADMIN)
    assert unpinned.status_code == 200, unpinned.text
    created = await admin.client.post("/admin/keys", headers=ADMIN, json={"id": "team-a"})
    assert created.status_code == 201, created.text
    assert (await admin.client.post("/admin/keys/team-a/rotate", headers=ADMIN)).status_code \
        == 200
    assert (await admin.client.delete("/admin/keys/team-a", headers=ADMIN)).status_code == 200
    trail = await events(admin)
    kinds = [(e["kind"], e["target"]) for e in trail if e["kind"] != "threshold"]
    assert kinds == [("key_revoke", "team-a"), ("key_rotate", "team-a"),
                     ("key_create", "team-a"), ("unpin", "ref-large"), ("ack", "ref-large"),
                     ("pin", "ref-large")]
    by_kind = {e["kind"]: e for e in trail}
    version = pinned.json()["pin"]["version"]
    assert by_kind["pin"]["after"] == {"version": version,
                                       "tuple_digest": pinned.json()["pin"]["tuple_digest"]}
    assert by_kind["unpin"]["before"] == by_kind["pin"]["after"]
    assert by_kind["unpin"]["after"] is None
    assert by_kind["ack"]["after"] == {"by": "alice", "rollback_to": None}
    revoked = by_kind["key_revoke"]["after"]
    assert isinstance(revoked, dict) and revoked["active"] is False
    key = created.json()["key"]
    assert all(key not in str(e) for e in trail)  # never a key
    assert all(e["actor"] == "sre-alice" for e in trail)


@module_loop
async def test_events_errors(admin: Admin) -> None:
    for bad in ({"kind": "guess"}, {"limit": 0}, {"limit": 1001}, {"limit": "x"}):
        reply = await admin.client.get("/admin/audit/events", headers=ADMIN, params=bad)
        assert reply.status_code == 400 and reply.json()["error"]["param"] == next(iter(bad))
    assert (await admin.client.get("/admin/audit/events")).status_code == 401


async def test_two_replicas_on_one_records_database_share_the_trail(
        tmp_path: Path, postgres_server: PostgresServer) -> None:
    """A fleet: records in PostgreSQL. A change made on one replica is in the trail every
    replica answers."""
    records = {"sink": "postgres", "postgres_url": postgres_server.url,
               "postgres_schema": f"trail{uuid.uuid4().hex[:8]}",
               "spool_dir": str(tmp_path / "spool-a"), "flush_interval_s": 0.01}
    one = reference_settings(tmp_path / "a", shadow={}, records=records)
    two = reference_settings(tmp_path / "b", shadow={},
                             records={**records, "spool_dir": str(tmp_path / "spool-b")})
    async with serve(one) as first, serve(two) as second:
        changed = await first.client.put("/admin/routes/auto/threshold", headers=ADMIN,
                                         json={"threshold": 0.25, "reason": "fleet"})
        assert changed.status_code == 200, changed.text
        seen = await events(second, kind="threshold", route="auto")
        assert [(e["before"], e["after"], e["reason"], e["replica"]) for e in seen] == [
            (0.094, 0.25, "fleet", first.state.tuples.replica)]
        assert await events(first) == seen
