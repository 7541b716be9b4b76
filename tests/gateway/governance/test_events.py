"""Where the admin audit trail is kept: the records PostgreSQL of a fleet (every replica reads
what any wrote, next to a working record store), else the registry history SQLite."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from gateway.governance.events import (
    AdminEvent,
    MemoryEventLog,
    PostgresEventLog,
    SqliteEventLog,
    open_event_log,
)
from gateway.governance.settings import GovernanceSettings
from gateway.kernel.errors import ServiceUnavailableError
from gateway.records.settings import RecordsSettings
from gateway.records.sinks import create_sink
from tests.conftest import PostgresServer, free_port


@dataclass
class Deployment:
    """What the trail reads of the settings (the test session's environment sets the history
    path of every ``Settings``: tests/conftest.py)."""

    records: RecordsSettings = field(default_factory=RecordsSettings)
    governance: GovernanceSettings = field(default_factory=GovernanceSettings)


def event(kind: str, target: str, after: object, replica: str) -> AdminEvent:
    return AdminEvent.new(kind, target, "sre-alice", None, after, "why", replica)


async def test_the_fleet_shares_one_trail_in_the_records_database(
        tmp_path: Path, postgres_server: PostgresServer) -> None:
    records = RecordsSettings(sink="postgres", postgres_url=postgres_server.url,
                              postgres_schema=f"events{uuid.uuid4().hex[:8]}",
                              spool_dir=tmp_path / "spool")
    one, two = PostgresEventLog(records), PostgresEventLog(records)  # two replicas
    written = [event("threshold", "auto", 0.3, "host-a:1"), event("ack", "ref-large", None,
                                                                  "host-b:2")]
    await one.append(written[0])
    await two.append(written[1])
    for replica in (one, two):
        assert await replica.list() == written[::-1]
        assert await replica.list(kind="threshold", target="auto") == [written[0]]
        assert await replica.list(limit=1) == [written[1]]
    sink = create_sink(records)  # the record store of the same schema still opens
    await sink.open()
    assert await sink.chains() == []
    await sink.aclose()
    chosen = open_event_log(Deployment(records=records))
    assert isinstance(chosen, PostgresEventLog) and await chosen.list() == written[::-1]


async def test_an_unreachable_database_is_a_503_without_its_password(tmp_path: Path) -> None:
    records = RecordsSettings(sink="postgres", spool_dir=tmp_path / "spool",
                              postgres_url=f"postgresql://u:s3cret-pw@127.0.0.1:{free_port()}/x",
                              postgres_connect_timeout_s=1)
    with pytest.raises(ServiceUnavailableError) as failed:
        await PostgresEventLog(records).append(event("threshold", "auto", 0.2, "r"))
    assert "s3cret-pw" not in str(failed.value) and "admin audit trail" in str(failed.value)


async def test_without_postgres_the_registry_history_keeps_it(tmp_path: Path) -> None:
    path = tmp_path / "registry.sqlite3"
    settings = Deployment(governance=GovernanceSettings(history_path=path))
    log = open_event_log(settings)
    assert isinstance(log, SqliteEventLog)
    written = [event("pin", "m", {"version": 1}, "r"), event("unpin", "m", None, "r")]
    for entry in written:
        await log.append(entry)
    assert await SqliteEventLog(path).list() == written[::-1]  # another reader of the file
    memory = open_event_log(Deployment(governance=GovernanceSettings(history_path=None)))
    assert isinstance(memory, MemoryEventLog)
    for entry in written:
        await memory.append(entry)
    assert await memory.list(kind="pin") == [written[0]]
