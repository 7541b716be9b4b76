"""What only the PostgreSQL store does: monthly partitions dropped by retention (leaving a chain
that still verifies), partitions made again on demand, and its URL's password kept out of errors.
The store-generic behaviour (appends, queries, tampering) is in test_store.py, run on every store.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import pytest_asyncio

from gateway.kernel.errors import ServiceUnavailableError
from gateway.records.audit import verify_store
from gateway.records.chain import Signer
from gateway.records.sinks import create_sink
from gateway.records.sinks.base import PendingRecord
from gateway.records.sinks.postgres import PostgresSink
from tests.gateway.records.conftest import PostgresServer, pending, postgres_settings, record_of

KEY = Signer(b"audit-key")
EVERY = 2


def at(year: int, month: int, day: int = 15) -> float:
    return datetime(year, month, day, 12, tzinfo=UTC).timestamp()


def received(when: float, text: str) -> PendingRecord:
    record = record_of(text)
    record["received_at"] = when
    return pending(record)


@pytest_asyncio.fixture
async def pg(tmp_path: Path, postgres_server: PostgresServer) -> AsyncIterator[PostgresSink]:
    sink = create_sink(postgres_settings(tmp_path, postgres_server))
    assert isinstance(sink, PostgresSink)
    await sink.open()
    yield sink
    await sink.aclose()


async def ok(sink: PostgresSink, chain: str) -> int | None:
    (report,) = await verify_store(sink, KEY, EVERY, chains=[chain])
    assert report.ok, report
    return report.first_seq


async def test_retention_drops_whole_old_months_and_the_chain_still_verifies(
        pg: PostgresSink) -> None:
    january = [received(at(2024, 1), f"jan {i}") for i in range(3)]
    february = [received(at(2024, 2), f"feb {i}") for i in range(3)]
    now = [received(at(2026, 1), f"now {i}") for i in range(2)]
    late = received(at(2024, 1, 20), "january, stored after newer records")
    for batch in (january, february, now, [late]):
        await pg.append("main", batch, KEY, EVERY)
    await pg.append("other", [received(at(2024, 2, 3), "other chain")], KEY, EVERY)
    assert await pg.partitions() == ["records_y2024m01", "records_y2024m02", "records_y2026m01"]

    assert await pg.prune("main", at(2024, 3, 1), KEY) == 6
    # January still holds the late record (after the anchor): kept, its prefix rows deleted.
    # February holds the other chain's record: kept until that chain is pruned too.
    assert await pg.partitions() == ["records_y2024m01", "records_y2024m02", "records_y2026m01"]
    assert [s.record_id async for s in pg.scan("main")] == [
        r.record_id for r in (*now, late)]
    assert await ok(pg, "main") == 7
    anchor = await pg.anchor("main")
    assert anchor is not None and anchor.seq == 6 and KEY.valid(anchor)

    assert await pg.prune("other", at(2024, 3, 1), KEY) == 1
    assert await pg.partitions() == ["records_y2024m01", "records_y2026m01"]  # dropped
    assert await pg.chains() == ["main", "other"]  # the emptied chain keeps its anchor

    await pg.append("main", [received(at(2026, 1, 16), "after the prune")], KEY, EVERY)
    assert await ok(pg, "main") == 7
    await pg.append("other", [received(at(2026, 1, 16), "other goes on")], KEY, EVERY)
    assert await ok(pg, "other") == 2


async def test_a_month_dropped_by_another_process_is_made_again(
        pg: PostgresSink, tmp_path: Path, postgres_server: PostgresServer) -> None:
    other = PostgresSink(pg.url, pg.schema)
    await other.open()
    try:
        await other.append("x", [received(at(2023, 6), "june")], KEY, EVERY)  # cached there
        assert await pg.prune("x", at(2023, 7, 1), KEY) == 1
        assert "records_y2023m06" not in await pg.partitions()
        await other.append("x", [received(at(2023, 6, 2), "june, late")], KEY, EVERY)
        assert "records_y2023m06" in await pg.partitions()
        assert await ok(pg, "x") == 2
    finally:
        await other.aclose()


async def test_the_url_password_never_shows_and_a_missing_store_is_named(
        tmp_path: Path, postgres_server: PostgresServer) -> None:
    settings = postgres_settings(tmp_path, postgres_server)
    down = PostgresSink(settings.postgres_url.replace(str(postgres_server.port), "1"),
                        settings.postgres_schema, connect_timeout_s=2)
    with pytest.raises(ServiceUnavailableError) as error:
        await down.open()
    assert postgres_server.password not in str(error.value)
    assert "tiergate:***@127.0.0.1:1" in str(error.value)

    reader = create_sink(settings, create=False)  # the CLI's reads make no empty store
    with pytest.raises(ServiceUnavailableError) as error:
        await reader.open()
    assert "no record store in schema" in str(error.value)
    assert postgres_server.password not in str(error.value)
