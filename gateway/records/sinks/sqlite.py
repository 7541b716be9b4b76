"""The embedded record store: one SQLite file in WAL mode.

Appends run in ``BEGIN IMMEDIATE`` transactions (one writer at a time, across processes too:
several gateway workers may share the file), committed with ``synchronous=FULL`` so a committed
batch survives power loss before the spool forgets it. Reads use their own connection and never
block the writer (WAL). Every call runs in a worker thread, off the event loop (except in the
records delivery process, which has no other work for its loop). The file is created ``0600``
in a directory created ``0700`` (SQLite gives its ``-wal`` and ``-shm`` files the file's mode).
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import orjson

from gateway.kernel.errors import ServiceUnavailableError
from gateway.kernel.files import create_private_file, make_private_dir
from gateway.records.chain import Checkpoint, Signer, StoredRecord
from gateway.records.sinks.base import (
    IndexedRecord,
    PendingRecord,
    RecordQuery,
    RecordSink,
    chain_batch,
)
from gateway.records.sinks.sql import COLUMNS, STORED, Dialect, checkpoint, stored

T = TypeVar("T")

STORE_VERSION = "1"
"""The layout of the tables below; a store of another layout is refused, not written to."""

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS records (
    chain_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    record_id TEXT NOT NULL UNIQUE,
    received_at REAL NOT NULL,
    route TEXT NOT NULL,
    models TEXT NOT NULL,
    escalated INTEGER NOT NULL,
    caller TEXT,
    prev_digest TEXT NOT NULL,
    stored_at REAL NOT NULL,
    digest TEXT NOT NULL,
    body BLOB NOT NULL,
    PRIMARY KEY (chain_id, seq)
);
CREATE INDEX IF NOT EXISTS records_received ON records (received_at);
CREATE TABLE IF NOT EXISTS checkpoints (
    chain_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    kind TEXT NOT NULL,
    digest TEXT NOT NULL,
    created_at REAL NOT NULL,
    signature TEXT,
    PRIMARY KEY (chain_id, kind, seq)
);
"""

SQLITE = Dialect(mark="?", models=orjson.loads,
                 has_model="EXISTS (SELECT 1 FROM json_each(records.models) WHERE value = ?)")
_CHECKPOINT = "chain_id, seq, kind, digest, created_at, signature"


def _fetch(sql: str, args: tuple[Any, ...], conn: sqlite3.Connection) -> list[Any]:
    return conn.execute(sql, args).fetchall()


class SQLiteSink(RecordSink):
    name = "sqlite"

    def __init__(self, path: Path, busy_timeout_s: float = 10.0, create: bool = True,
                 in_thread: bool = True) -> None:
        self.path = path
        self.busy_timeout_s = busy_timeout_s
        self.create = create
        """``False``: a missing file is an error, not a new empty store (the CLI's reads)."""
        self.in_thread = in_thread
        """``False``: calls run on the caller's thread (the records delivery process, whose
        loop has nothing else to do: a hand-off to a worker thread costs more than it saves)."""
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    def _connect(self) -> sqlite3.Connection:
        if not self.create and not self.path.exists():
            raise ServiceUnavailableError(f"no record store at {self.path} (records.sqlite_path)")
        make_private_dir(self.path.parent)
        create_private_file(self.path)  # SQLite would make it with the umask's mode (0644)
        conn = sqlite3.connect(self.path, timeout=self.busy_timeout_s, isolation_level=None,
                               check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if "records" in tables:
            row = (conn.execute("SELECT value FROM meta WHERE key = 'store_version'").fetchone()
                   if "meta" in tables else None)
            if row is None or row[0] != STORE_VERSION:
                conn.close()
                raise ServiceUnavailableError(
                    f"record store {self.path} has layout version {row[0] if row else 'none'}"
                    f", this tiergate writes version {STORE_VERSION}: point records.sqlite_path "
                    "at a new file (and keep the old one for its audits)")
        conn.executescript(SCHEMA)
        conn.execute("INSERT OR IGNORE INTO meta VALUES ('store_version', ?)", (STORE_VERSION,))
        return conn

    async def _run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        def locked() -> T:
            with self._lock:
                if self._conn is None:
                    raise ServiceUnavailableError("the record store is closed")
                try:
                    return work(self._conn)
                except sqlite3.Error as exc:
                    raise ServiceUnavailableError(f"record store {self.path}: {exc}") from exc
        return await asyncio.to_thread(locked) if self.in_thread else locked()

    async def open(self) -> None:
        if self._conn is None:
            try:
                self._conn = (await asyncio.to_thread(self._connect) if self.in_thread
                              else self._connect())
            except (sqlite3.Error, OSError) as exc:
                raise ServiceUnavailableError(f"record store {self.path}: {exc}") from exc

    async def aclose(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with self._lock:
                conn.close()

    async def append(self, chain_id: str, records: list[PendingRecord], signer: Signer,
                     checkpoint_every: int) -> int:
        def work(conn: sqlite3.Connection) -> int:
            conn.execute("BEGIN IMMEDIATE")
            try:
                stored = self._append(conn, chain_id, records, signer, checkpoint_every)
                conn.execute("COMMIT")
                return stored
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        return await self._run(work)

    def _append(self, conn: sqlite3.Connection, chain_id: str, records: list[PendingRecord],
                signer: Signer, every: int) -> int:
        ids = [r.record_id for r in records]
        known: set[str] = set()
        for i in range(0, len(ids), 500):
            part = ids[i:i + 500]
            known.update(row[0] for row in conn.execute(
                f"SELECT record_id FROM records WHERE record_id IN ({','.join('?' * len(part))})",
                part))
        fresh = [r for r in records if r.record_id not in known]
        if not fresh:
            return 0
        head = self._head(conn, chain_id)
        batch = chain_batch(chain_id, head, fresh, signer, every)
        conn.executemany(
            f"INSERT INTO records ({COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            [(r.stored.chain_id, r.stored.seq, r.stored.record_id, r.received_at, r.route,
              orjson.dumps(r.models).decode(), int(r.escalated), r.caller, r.stored.prev_digest,
              r.stored.stored_at, r.stored.digest, r.stored.body) for r in batch.rows])
        conn.executemany(
            "INSERT OR REPLACE INTO checkpoints VALUES (?,?,?,?,?,?)",
            [(p.chain_id, p.seq, p.kind, p.digest, p.created_at, p.signature)
             for p in batch.checkpoints])
        return len(batch.rows)

    @staticmethod
    def _head(conn: sqlite3.Connection, chain_id: str) -> tuple[int, str]:
        from gateway.records.chain import genesis_digest

        row = conn.execute("SELECT seq, digest FROM records WHERE chain_id = ? "
                           "ORDER BY seq DESC LIMIT 1", (chain_id,)).fetchone()
        if row is not None:
            return int(row[0]), str(row[1])
        anchor = conn.execute("SELECT seq, digest FROM checkpoints WHERE chain_id = ? AND "
                              "kind = 'anchor' ORDER BY seq DESC LIMIT 1", (chain_id,)).fetchone()
        if anchor is not None:
            return int(anchor[0]), str(anchor[1])
        return 0, genesis_digest(chain_id)

    async def chains(self) -> list[str]:
        return await self._run(lambda c: [r[0] for r in c.execute(
            "SELECT DISTINCT chain_id FROM records UNION "
            "SELECT DISTINCT chain_id FROM checkpoints ORDER BY 1")])

    async def _fetch(self, sql: str, args: tuple[Any, ...]) -> list[Any]:
        return await self._run(partial(_fetch, sql, args))

    def scan(self, chain_id: str, from_seq: int = 1) -> AsyncIterator[StoredRecord]:
        return SQLITE.scan(chain_id, from_seq, self._fetch)

    async def get(self, record_id: str) -> StoredRecord | None:
        row = await self._run(lambda c: c.execute(
            f"SELECT {STORED} FROM records WHERE record_id = ?", (record_id,)).fetchone())
        return None if row is None else stored(row)

    def query(self, query: RecordQuery) -> AsyncIterator[IndexedRecord]:
        return SQLITE.query(query, self._fetch)

    async def first_seq_since(self, chain_id: str, since: float) -> int | None:
        row = await self._run(lambda c: c.execute(
            "SELECT MIN(seq) FROM records WHERE chain_id = ? AND received_at >= ?",
            (chain_id, since)).fetchone())
        return None if row is None or row[0] is None else int(row[0])

    async def checkpoints(self, chain_id: str) -> list[Checkpoint]:
        return await self._run(lambda c: [checkpoint(r) for r in c.execute(
            f"SELECT {_CHECKPOINT} FROM checkpoints WHERE chain_id = ? AND kind = 'checkpoint' "
            "ORDER BY seq", (chain_id,))])

    async def anchor(self, chain_id: str) -> Checkpoint | None:
        row = await self._run(lambda c: c.execute(
            f"SELECT {_CHECKPOINT} FROM checkpoints WHERE chain_id = ? AND kind = 'anchor' "
            "ORDER BY seq DESC LIMIT 1",
            (chain_id,)).fetchone())
        return None if row is None else checkpoint(row)

    async def prune(self, chain_id: str, before: float, signer: Signer) -> int:
        def work(conn: sqlite3.Connection) -> int:
            conn.execute("BEGIN IMMEDIATE")
            try:
                keep = conn.execute("SELECT MIN(seq) FROM records WHERE chain_id = ? AND "
                                    "received_at >= ?", (chain_id, before)).fetchone()[0]
                last = conn.execute(
                    "SELECT seq, digest FROM records WHERE chain_id = ? AND seq < ? "
                    "ORDER BY seq DESC LIMIT 1",
                    (chain_id, keep if keep is not None else 2**62)).fetchone()
                if last is None:
                    conn.execute("COMMIT")
                    return 0
                anchor = signer.checkpoint(chain_id, int(last[0]), str(last[1]), kind="anchor")
                deleted = conn.execute("DELETE FROM records WHERE chain_id = ? AND seq <= ?",
                                       (chain_id, anchor.seq)).rowcount
                conn.execute("DELETE FROM checkpoints WHERE chain_id = ? AND seq <= ?",
                             (chain_id, anchor.seq))
                conn.execute("INSERT INTO checkpoints VALUES (?,?,?,?,?,?)",
                             (chain_id, anchor.seq, "anchor", anchor.digest, anchor.created_at,
                              anchor.signature))
                conn.execute("COMMIT")
                return int(deleted)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        return await self._run(work)
