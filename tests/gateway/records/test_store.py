"""Every store (SQLite, Redis Streams, PostgreSQL): appends, queries, and tampering caught by
verification.

Every test runs once per store; tampering edits the store directly, as someone with write access
to the database would.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from dataclasses import dataclass
from typing import Any

import orjson
import psycopg
import pytest
import redis

from gateway.records.audit import ChainReport, verify_store
from gateway.records.chain import Signer, content_sha256, link_digest
from gateway.records.sinks import RecordQuery, create_sink, sql
from gateway.records.sinks.base import RecordSink
from gateway.records.sinks.postgres import PostgresSink
from gateway.records.sinks.redis import RedisSink
from gateway.records.sinks.sqlite import SQLiteSink
from router.decision import Decision
from tests.gateway.records.conftest import SinkSettings, pending, record_of

KEY = Signer(b"audit-key")
EVERY = 4


async def fill(sink: RecordSink, count: int, chain: str = "main", signer: Signer = KEY,
               **options: Any) -> list[str]:
    records = [pending(record_of(f"question {i}", **options)) for i in range(count)]
    for i in range(0, count, 3):  # several batches
        await sink.append(chain, records[i:i + 3], signer, EVERY)
    return [r.record_id for r in records]


async def verify(sink: RecordSink, signer: Signer = KEY, since: float | None = None
                 ) -> ChainReport:
    reports = await verify_store(sink, signer, EVERY, since=since)
    assert len(reports) == 1
    return reports[0]


# -- editing a store behind its back --------------------------------------------------------


@dataclass
class Entry:
    seq: int
    record_id: str
    prev_digest: str
    stored_at: float
    digest: str
    body: bytes

    def data(self) -> dict[str, Any]:
        value: dict[str, Any] = orjson.loads(self.body)
        return value

    def relink(self, prev: str) -> None:
        """Recompute the link after ``prev``, as someone without the signing key can."""
        self.prev_digest = prev
        self.digest = link_digest("main", self.seq, self.record_id, prev,
                                  content_sha256(self.body), self.stored_at)


class Editor:
    """Raw access to a store's rows, bypassing the sink."""

    def __init__(self, sink: RecordSink, chain: str = "main") -> None:
        self.sink, self.chain = sink, chain

    def postgres(self) -> psycopg.Connection[Any]:
        assert isinstance(self.sink, PostgresSink)
        return psycopg.connect(self.sink.url, autocommit=True,
                               options=f"-c search_path={self.sink.schema}")

    def entries(self) -> list[Entry]:
        if isinstance(self.sink, PostgresSink):
            with self.postgres() as conn:
                return [Entry(*row) for row in conn.execute(
                    "SELECT seq, record_id, prev_digest, stored_at, digest, body FROM records "
                    "WHERE chain_id = %s ORDER BY seq", (self.chain,))]
        if isinstance(self.sink, SQLiteSink):
            with sqlite3.connect(self.sink.path) as conn:
                return [Entry(*row) for row in conn.execute(
                    "SELECT seq, record_id, prev_digest, stored_at, digest, body FROM records "
                    "WHERE chain_id = ? ORDER BY seq", (self.chain,))]
        assert isinstance(self.sink, RedisSink)
        client: Any = redis.Redis.from_url(self.sink.url)
        return [Entry(int(i.decode().split("-")[1]), f[b"record_id"].decode(),
                      f[b"prev_digest"].decode(), float(f[b"stored_at"]),
                      f[b"digest"].decode(), f[b"body"])
                for i, f in client.xrange(f"{self.sink.prefix}:chain:{self.chain}")]

    def rewrite(self, entries: list[Entry]) -> None:
        """Replace the chain's rows by ``entries`` (stored under their ``seq``)."""
        if isinstance(self.sink, PostgresSink):
            with self.postgres() as conn, conn.transaction():
                conn.execute("DELETE FROM records WHERE chain_id = %s", (self.chain,))
                with conn.cursor() as cur:
                    cur.executemany(
                        "INSERT INTO records VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s)",
                        [(self.chain, e.seq, e.record_id, e.data()["received_at"], "small",
                          ["small"], False, None, e.prev_digest, e.stored_at, e.digest, e.body)
                         for e in entries])
            return
        if isinstance(self.sink, SQLiteSink):
            with sqlite3.connect(self.sink.path) as conn:
                conn.execute("DELETE FROM records WHERE chain_id = ?", (self.chain,))
                conn.executemany(
                    "INSERT INTO records VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                    [(self.chain, e.seq, e.record_id, e.data()["received_at"], "small",
                      '["small"]', 0, None, e.prev_digest, e.stored_at, e.digest, e.body)
                     for e in entries])
            return
        assert isinstance(self.sink, RedisSink)
        client = redis.Redis.from_url(self.sink.url)
        stream = f"{self.sink.prefix}:chain:{self.chain}"
        client.delete(stream)
        for e in entries:
            client.xadd(stream, {"record_id": e.record_id, "digest": e.digest, "body": e.body,
                                 "prev_digest": e.prev_digest, "stored_at": repr(e.stored_at),
                                 "received_at": repr(e.data()["received_at"]), "route": "small",
                                 "models": b'["small"]', "escalated": "0", "caller": ""},
                        id=f"0-{e.seq}")

    def drop_checkpoints(self) -> None:
        if isinstance(self.sink, PostgresSink):
            with self.postgres() as conn:
                conn.execute("DELETE FROM checkpoints")
            return
        if isinstance(self.sink, SQLiteSink):
            with sqlite3.connect(self.sink.path) as conn:
                conn.execute("DELETE FROM checkpoints")
            return
        assert isinstance(self.sink, RedisSink)
        redis.Redis.from_url(self.sink.url).delete(f"{self.sink.prefix}:checkpoints:main")


def relink(entries: list[Entry], start: int) -> None:
    """Recompute every link from ``entries[start]`` on."""
    prev = entries[start - 1].digest if start else entries[0].prev_digest
    for entry in entries[start:]:
        entry.relink(prev)
        prev = entry.digest


# -- appends and queries ----------------------------------------------------------------------


async def test_appends_chain_in_order_and_skip_known_ids(sink: RecordSink) -> None:
    ids = await fill(sink, 10)
    again = [record_of(), record_of(), record_of()]
    again[1]["record_id"], again[2]["record_id"] = ids[0], ids[1]
    added = await sink.append("main", [pending(r) for r in again], KEY, EVERY)
    assert added == 1  # the two known ids are skipped
    stored = [s async for s in sink.scan("main")]
    assert [s.seq for s in stored] == list(range(1, 12))
    assert [s.record_id for s in stored[:10]] == ids
    report = await verify(sink)
    assert report.ok and report.records == 11 and report.checkpoints == 2, report
    got = await sink.get(ids[3])
    assert got is not None and got.seq == 4 and got.data()["chain"]["seq"] == 4
    assert await sink.get("nope") is None


async def test_queries_filter_by_time_route_model_escalated_caller(sink: RecordSink) -> None:
    escalated = Decision(route="auto", mode="cascade", tier="large", model="large",
                         escalated=True, candidates=["small", "large"])
    await fill(sink, 3)
    middle = time.time()
    await asyncio.sleep(0.01)
    await sink.append("main", [pending(record_of("up", route="auto", decision=escalated,
                                                 caller="team-b"))], KEY, EVERY)

    async def ids(**filters: Any) -> int:
        return len([r async for r in sink.query(RecordQuery(**filters))])

    assert await ids() == 4
    assert await ids(route="auto") == 1 and await ids(route="small") == 3
    assert await ids(model="large") == 1 and await ids(model="small") == 4
    assert await ids(escalated=True) == 1 and await ids(escalated=False) == 3
    assert await ids(caller="team-b") == 1
    assert await ids(since=middle) == 1 and await ids(until=middle) == 3
    assert await ids(limit=2) == 2
    (newest,) = [r async for r in sink.query(RecordQuery(limit=1))]  # by time
    assert newest.route == "auto" and newest.models == ["small", "large"] and newest.escalated


async def test_queries_read_every_page_in_order(sink: RecordSink,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Pages of 2 (keyset: each page after the last row's time, chain and seq) give every
    record once, in the order one read would, for both directions and any limit."""
    monkeypatch.setattr(sql, "PAGE", 2)
    await fill(sink, 7, chain="a")
    await fill(sink, 5, chain="b")
    every = [r async for r in sink.query(RecordQuery(limit=None, newest_first=False))]
    keys = [(r.received_at, r.stored.chain_id, r.stored.seq) for r in every]
    assert len(every) == 12 and keys == sorted(keys)
    newest = [r async for r in sink.query(RecordQuery(limit=None))]
    assert [r.stored.record_id for r in newest] == [r.stored.record_id for r in every][::-1]
    for limit in (1, 2, 5, 12, 30):
        got = [r async for r in sink.query(RecordQuery(limit=limit, newest_first=False))]
        assert got == every[:limit]
    in_b = [r async for r in sink.query(RecordQuery(limit=None, chain_id="b"))]
    assert [r.stored.seq for r in in_b] == [5, 4, 3, 2, 1]


async def test_concurrent_appenders_share_one_chain(store_settings: SinkSettings) -> None:
    """Two gateway processes (two store connections) appending at once: one valid chain."""
    sinks = [create_sink(store_settings()) for _ in range(2)]
    for s in sinks:
        await s.open()
    try:
        await asyncio.gather(*(fill(s, 30) for s in sinks))
        report = await verify(sinks[0])
        assert report.ok and report.records == 60, report
    finally:
        for s in sinks:
            await s.aclose()


async def test_retention_prunes_a_prefix_and_leaves_a_signed_anchor(sink: RecordSink) -> None:
    await fill(sink, 5)
    cutoff = time.time()
    await asyncio.sleep(0.01)
    kept = await fill(sink, 3)
    assert await sink.prune("main", cutoff, KEY) == 5
    assert [s.record_id async for s in sink.scan("main")] == kept
    report = await verify(sink)
    assert report.ok and report.first_seq == 6, report
    await fill(sink, 1)  # appends continue after the anchor
    assert (await verify(sink)).ok
    forged = await sink.anchor("main")
    assert forged is not None and KEY.valid(forged)
    assert not Signer(b"other key").valid(forged)


# -- tampering ----------------------------------------------------------------------------------


async def test_an_altered_record_is_caught(sink: RecordSink) -> None:
    ids = await fill(sink, 8)
    editor = Editor(sink)
    entries = editor.entries()
    entries[4].body = entries[4].body.replace(b"question 4", b"question X")
    editor.rewrite(entries)
    report = await verify(sink)
    assert not report.ok and report.broken is not None
    assert report.broken.seq == 5 and report.broken.record_id == ids[4]
    assert "altered" in report.broken.problem


async def test_an_altered_record_with_its_digest_redone_breaks_the_next_link(
        sink: RecordSink) -> None:
    await fill(sink, 8)
    editor = Editor(sink)
    entries = editor.entries()
    data = entries[4].data()
    data["calls"][0]["choices"][0]["text"] = "a different answer"
    entries[4].body = orjson.dumps(data, option=orjson.OPT_SORT_KEYS)
    entries[4].relink(entries[4].prev_digest)
    editor.rewrite(entries)
    report = await verify(sink)
    assert report.broken is not None and report.broken.seq == 6
    assert "prev_digest" in report.broken.problem


async def test_a_deleted_record_is_caught(sink: RecordSink) -> None:
    await fill(sink, 8)
    editor = Editor(sink)
    entries = editor.entries()
    del entries[4]
    editor.rewrite(entries)
    report = await verify(sink)
    assert report.broken is not None and report.broken.seq == 5
    assert "deleted" in report.broken.problem


async def test_reordered_records_are_caught(sink: RecordSink) -> None:
    await fill(sink, 8)
    editor = Editor(sink)
    entries = editor.entries()
    (entries[3].body, entries[3].record_id, entries[3].digest,
     entries[4].body, entries[4].record_id, entries[4].digest) = (
        entries[4].body, entries[4].record_id, entries[4].digest,
        entries[3].body, entries[3].record_id, entries[3].digest)
    editor.rewrite(entries)
    report = await verify(sink)
    assert report.broken is not None and report.broken.seq == 4


async def test_a_rewritten_chain_is_caught_by_signed_checkpoints(sink: RecordSink) -> None:
    await fill(sink, 10)
    editor = Editor(sink)
    entries = editor.entries()
    data = entries[2].data()
    data["calls"][0]["choices"][0]["text"] = "rewritten"
    entries[2].body = orjson.dumps(data)
    relink(entries, 2)  # every digest and link after the edit recomputed
    editor.rewrite(entries)
    report = await verify(sink, Signer(None))
    assert report.broken is not None and "checkpoint at seq 4" in report.broken.problem
    # A forger also removes the checkpoints: the links alone are consistent again, and only
    # the signing key can tell.
    editor.drop_checkpoints()
    assert (await verify(sink, Signer(None))).ok
    report = await verify(sink)
    assert report.broken is not None and report.broken.seq == 4
    assert "missing" in report.broken.problem


async def test_a_cut_tail_and_deleted_checkpoints_are_caught(sink: RecordSink) -> None:
    await fill(sink, 10)
    editor = Editor(sink)
    editor.rewrite(editor.entries()[:6])  # seq 7..10 gone; checkpoint at 8 remains
    report = await verify(sink)
    assert report.broken is not None and "tail" in report.broken.problem
    editor.drop_checkpoints()
    report = await verify(sink)
    assert report.broken is not None and report.broken.seq == 4
    assert "missing" in report.broken.problem


async def test_verify_since_checks_the_window(sink: RecordSink) -> None:
    await fill(sink, 4)
    middle = time.time()
    await asyncio.sleep(0.01)
    await fill(sink, 6)
    report = await verify(sink, since=middle)
    assert report.ok and report.first_seq == 5 and report.records == 6, report
    editor = Editor(sink)
    entries = editor.entries()
    entries[7].body = entries[7].body.replace(b"question", b"QUESTION")
    editor.rewrite(entries)
    report = await verify(sink, since=middle)
    assert report.broken is not None and report.broken.seq == 8
