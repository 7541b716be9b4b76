"""Records in PostgreSQL, for a fleet of gateways and years of retention (psycopg 3).

Tables, in the schema ``records.postgres_schema``:

- ``records`` — one row per record, **partitioned by month** of ``received_at`` (``RANGE``
  partitions ``records_yYYYYmMM``, created on demand when a record of a new month arrives),
  indexed for what auditors ask: time, route (with time), model (GIN over ``models``),
  escalated, caller, record id, and ``(chain_id, seq)``;
- ``chains`` — each chain's head ``(seq, digest)``: an append locks its chain's row
  (``SELECT ... FOR UPDATE``), so appends to one chain are serialized across every gateway
  sharing the database, and appends to different chains run side by side;
- ``checkpoints`` — periodic checkpoints and retention anchors, as in the SQLite store;
- ``tiergate_meta`` — the layout version.

Retention drops whole partitions: a month older than the cut-off whose rows all belong to the
pruned prefix of the chain is dropped (no row-by-row delete, no table bloat); rows of the prefix
in a month that cannot be dropped yet (the month the cut-off falls in, or one still holding
another chain's records) are deleted. Either way the prune leaves a signed anchor, the link of
the last record removed, where verification starts — the same rule as the other stores.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

from gateway.kernel.errors import ServiceUnavailableError
from gateway.kernel.secrets import redact, redact_error
from gateway.records.chain import Checkpoint, Signer, StoredRecord, genesis_digest
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
_PARTITION = re.compile(r"^records_y(\d{4})m(\d{2})$")
_CREATE_LOCK = 0x7469_6572_6761_7465  # pg_advisory_xact_lock key: creating partitions

SCHEMA = """
CREATE TABLE IF NOT EXISTS tiergate_meta (key text PRIMARY KEY, value text NOT NULL);
CREATE TABLE IF NOT EXISTS chains (
    chain_id text PRIMARY KEY,
    seq bigint NOT NULL,
    digest text NOT NULL
);
CREATE TABLE IF NOT EXISTS records (
    chain_id text NOT NULL,
    seq bigint NOT NULL,
    record_id text NOT NULL,
    received_at double precision NOT NULL,
    route text NOT NULL,
    models text[] NOT NULL,
    escalated boolean NOT NULL,
    caller text,
    prev_digest text NOT NULL,
    stored_at double precision NOT NULL,
    digest text NOT NULL,
    body bytea NOT NULL,
    PRIMARY KEY (chain_id, seq, received_at)
) PARTITION BY RANGE (received_at);
CREATE INDEX IF NOT EXISTS records_received ON records (received_at);
CREATE INDEX IF NOT EXISTS records_route ON records (route, received_at);
CREATE INDEX IF NOT EXISTS records_models ON records USING gin (models);
CREATE INDEX IF NOT EXISTS records_escalated ON records (escalated, received_at);
CREATE INDEX IF NOT EXISTS records_caller ON records (caller, received_at);
CREATE INDEX IF NOT EXISTS records_record_id ON records (record_id);
CREATE TABLE IF NOT EXISTS checkpoints (
    chain_id text NOT NULL,
    seq bigint NOT NULL,
    kind text NOT NULL,
    digest text NOT NULL,
    created_at double precision NOT NULL,
    signature text,
    PRIMARY KEY (chain_id, kind, seq)
);
"""

POSTGRES = Dialect(mark="%s", models=list, has_model="models @> ARRAY[%s]::text[]")
_CHECKPOINT = "chain_id, seq, kind, digest, created_at, signature"


def month_of(epoch: float) -> tuple[int, int]:
    moment = datetime.fromtimestamp(epoch, UTC)
    return moment.year, moment.month


def month_bounds(year: int, month: int) -> tuple[float, float]:
    """The epoch seconds a monthly partition holds: ``[start, end)``."""
    start = datetime(year, month, 1, tzinfo=UTC)
    end = datetime(year + month // 12, month % 12 + 1, 1, tzinfo=UTC)
    return start.timestamp(), end.timestamp()


def partition_name(year: int, month: int) -> str:
    return f"records_y{year:04d}m{month:02d}"


class PostgresSink(RecordSink):
    name = "postgres"

    def __init__(self, url: str, schema: str, connect_timeout_s: float = 5.0,
                 statement_timeout_s: float = 60.0, create: bool = True) -> None:
        self.url = url
        self.shown_url = redact(url)
        """The URL as errors and logs show it: its password masked."""
        self.schema = schema
        self.connect_timeout_s = connect_timeout_s
        self.statement_timeout_s = statement_timeout_s
        self.create = create
        """``False``: a database without the tables is an error, not a new empty store."""
        self._conn: Any = None
        self._opened = False
        self._lock = asyncio.Lock()
        """One connection per sink: its statements run one at a time."""
        self._partitions: set[str] = set()
        """Partitions known to exist (a cache: a dropped one is found again on insert)."""

    def _failure(self, exc: BaseException) -> ServiceUnavailableError:
        return ServiceUnavailableError(f"record store {self.shown_url}: {redact_error(exc)}")

    async def _run(self, work: Callable[[Any], Awaitable[T]]) -> T:
        """Run ``work(connection)``; database failures become the gateway's 503."""
        import psycopg

        async with self._lock:
            if not self._opened:
                raise ServiceUnavailableError("the record store is closed")
            try:
                return await work(await self._connection())
            except psycopg.Error as exc:
                raise self._failure(exc) from exc

    async def _connection(self) -> Any:
        """The open connection, made again when the server dropped it (a restart, a failover):
        the delivery process opens its store once and keeps retrying through outages."""
        conn = self._conn
        if conn is not None and not conn.closed and not conn.broken:
            return conn
        self._conn = None
        if conn is not None:
            await conn.close()
        self._conn = await self._connect()
        return self._conn

    async def _connect(self) -> Any:
        import psycopg

        try:
            conn = await psycopg.AsyncConnection.connect(
                self.url, autocommit=True, connect_timeout=max(1, round(self.connect_timeout_s)),
                options=f"-c statement_timeout={int(self.statement_timeout_s * 1000)}")
        except psycopg.Error as exc:
            raise self._failure(exc) from exc
        try:
            await self._prepare(conn)
        except BaseException as exc:
            await conn.close()
            if isinstance(exc, psycopg.Error):
                raise self._failure(exc) from exc
            raise
        return conn

    async def open(self) -> None:
        async with self._lock:
            await self._connection()
            self._opened = True

    async def _prepare(self, conn: Any) -> None:
        from psycopg import sql

        schema = sql.Identifier(self.schema)
        tables = {r[0] for r in await (await conn.execute(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = %s AND c.relname IN ('records', 'tiergate_meta')",
            (self.schema,))).fetchall()}
        found = ("records" in tables, "tiergate_meta" in tables)
        if not found[0] and not self.create:
            raise ServiceUnavailableError(
                f"no record store in schema {self.schema!r} of {self.shown_url} "
                "(records.postgres_url, records.postgres_schema)")
        if found[0]:
            version = None
            if found[1]:
                row = await (await conn.execute(sql.SQL(
                    "SELECT value FROM {}.tiergate_meta WHERE key = 'store_version'").format(
                        schema))).fetchone()
                version = row[0] if row else None
            if version != STORE_VERSION:
                raise ServiceUnavailableError(
                    f"record store {self.shown_url} (schema {self.schema!r}) has layout version "
                    f"{version or 'none'}, this tiergate writes version {STORE_VERSION}: point "
                    "records.postgres_schema at a new schema (and keep the old one for audits)")
        await conn.execute(sql.SQL("SET search_path TO {}").format(schema))
        if not found[0]:
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_CREATE_LOCK,))
                await conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(schema))
                await conn.execute(SCHEMA)
                await conn.execute("INSERT INTO tiergate_meta VALUES ('store_version', %s) "
                                   "ON CONFLICT DO NOTHING", (STORE_VERSION,))

    async def aclose(self) -> None:
        async with self._lock:
            self._opened = False
            conn, self._conn = self._conn, None
            if conn is not None:
                await conn.close()

    # -- appends ------------------------------------------------------------------------------

    async def _ensure_partitions(self, conn: Any, received: list[float]) -> None:
        from psycopg import sql

        for year, month in sorted({month_of(t) for t in received}):
            name = partition_name(year, month)
            if name in self._partitions:
                continue
            start, end = month_bounds(year, month)
            async with conn.transaction():  # one creator at a time across the fleet
                await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_CREATE_LOCK,))
                await conn.execute(sql.SQL(
                    "CREATE TABLE IF NOT EXISTS {} PARTITION OF records "
                    "FOR VALUES FROM ({}) TO ({})").format(
                        sql.Identifier(name), sql.Literal(start), sql.Literal(end)))
            self._partitions.add(name)

    async def append(self, chain_id: str, records: list[PendingRecord], signer: Signer,
                     checkpoint_every: int) -> int:
        import psycopg

        async def work(conn: Any) -> int:
            for attempt in range(3):
                await self._ensure_partitions(conn, [r.received_at for r in records])
                try:
                    async with conn.transaction():
                        return await self._append(conn, chain_id, records, signer,
                                                  checkpoint_every)
                except psycopg.errors.CheckViolation:
                    # no partition for a row: retention dropped its month since it was cached
                    self._partitions.clear()
                    if attempt == 2:
                        raise
            raise AssertionError("unreachable")
        return await self._run(work)

    async def _append(self, conn: Any, chain_id: str, records: list[PendingRecord],
                      signer: Signer, every: int) -> int:
        await conn.execute("INSERT INTO chains VALUES (%s, 0, %s) ON CONFLICT DO NOTHING",
                           (chain_id, genesis_digest(chain_id)))
        head = await (await conn.execute(
            "SELECT seq, digest FROM chains WHERE chain_id = %s FOR UPDATE",
            (chain_id,))).fetchone()
        known = {row[0] for row in await (await conn.execute(
            "SELECT record_id FROM records WHERE record_id = ANY(%s)",
            ([r.record_id for r in records],))).fetchall()}
        fresh = [r for r in records if r.record_id not in known]
        if not fresh:
            return 0
        batch = chain_batch(chain_id, (int(head[0]), str(head[1])), fresh, signer, every)
        async with conn.cursor() as cur:
            await cur.executemany(
                f"INSERT INTO records ({COLUMNS}) VALUES "
                "(%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s)",
                [(r.stored.chain_id, r.stored.seq, r.stored.record_id, r.received_at, r.route,
                  r.models, r.escalated, r.caller, r.stored.prev_digest, r.stored.stored_at,
                  r.stored.digest, r.stored.body) for r in batch.rows])
            if batch.checkpoints:
                await cur.executemany(
                    f"INSERT INTO checkpoints ({_CHECKPOINT}) VALUES (%s,%s,%s,%s,%s,%s) "
                    "ON CONFLICT (chain_id, kind, seq) DO UPDATE SET digest = EXCLUDED.digest, "
                    "created_at = EXCLUDED.created_at, signature = EXCLUDED.signature",
                    [(p.chain_id, p.seq, p.kind, p.digest, p.created_at, p.signature)
                     for p in batch.checkpoints])
        last = batch.rows[-1].stored
        await conn.execute("UPDATE chains SET seq = %s, digest = %s WHERE chain_id = %s",
                           (last.seq, last.digest, chain_id))
        return len(batch.rows)

    # -- reads --------------------------------------------------------------------------------

    async def _fetch(self, query: str, args: tuple[Any, ...]) -> list[Any]:
        async def work(conn: Any) -> list[Any]:
            rows: list[Any] = await (await conn.execute(query, args)).fetchall()
            return rows
        return await self._run(work)

    async def chains(self) -> list[str]:
        return [r[0] for r in await self._fetch(
            "SELECT chain_id FROM chains UNION SELECT chain_id FROM checkpoints ORDER BY 1", ())]

    def scan(self, chain_id: str, from_seq: int = 1) -> AsyncIterator[StoredRecord]:
        return POSTGRES.scan(chain_id, from_seq, self._fetch)

    async def get(self, record_id: str) -> StoredRecord | None:
        rows = await self._fetch(f"SELECT {STORED} FROM records WHERE record_id = %s LIMIT 1",
                                 (record_id,))
        return stored(rows[0]) if rows else None

    def query(self, query: RecordQuery) -> AsyncIterator[IndexedRecord]:
        return POSTGRES.query(query, self._fetch)

    async def first_seq_since(self, chain_id: str, since: float) -> int | None:
        rows = await self._fetch("SELECT MIN(seq) FROM records WHERE chain_id = %s AND "
                                 "received_at >= %s", (chain_id, since))
        return None if not rows or rows[0][0] is None else int(rows[0][0])

    async def checkpoints(self, chain_id: str) -> list[Checkpoint]:
        return [checkpoint(r) for r in await self._fetch(
            f"SELECT {_CHECKPOINT} FROM checkpoints WHERE chain_id = %s AND kind = 'checkpoint' "
            "ORDER BY seq", (chain_id,))]

    async def anchor(self, chain_id: str) -> Checkpoint | None:
        rows = await self._fetch(
            f"SELECT {_CHECKPOINT} FROM checkpoints WHERE chain_id = %s AND kind = 'anchor' "
            "ORDER BY seq DESC LIMIT 1", (chain_id,))
        return checkpoint(rows[0]) if rows else None

    # -- retention ----------------------------------------------------------------------------

    async def partitions(self) -> list[str]:
        """The monthly partitions of ``records``, oldest first."""
        return sorted(r[0] for r in await self._fetch(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = 'records'::regclass", ()))

    async def prune(self, chain_id: str, before: float, signer: Signer) -> int:
        async def work(conn: Any) -> int:
            async with conn.transaction():
                return await self._prune(conn, chain_id, before, signer)
        return await self._run(work)

    async def _prune(self, conn: Any, chain_id: str, before: float, signer: Signer) -> int:
        from psycopg import sql

        head = await (await conn.execute("SELECT seq FROM chains WHERE chain_id = %s FOR UPDATE",
                                         (chain_id,))).fetchone()
        if head is None:
            return 0
        keep = (await (await conn.execute(
            "SELECT MIN(seq) FROM records WHERE chain_id = %s AND received_at >= %s",
            (chain_id, before))).fetchone())[0]
        last = await (await conn.execute(
            "SELECT seq, digest FROM records WHERE chain_id = %s AND seq < %s "
            "ORDER BY seq DESC LIMIT 1",
            (chain_id, keep if keep is not None else 2**62))).fetchone()
        if last is None:
            return 0
        anchor = signer.checkpoint(chain_id, int(last[0]), str(last[1]), kind="anchor")
        removed = 0
        for name in await self._old_partitions(conn, before):
            part = sql.Identifier(name)
            kept = await (await conn.execute(sql.SQL(
                "SELECT EXISTS (SELECT 1 FROM {} WHERE chain_id <> %s OR seq > %s)").format(part),
                (chain_id, anchor.seq))).fetchone()
            if kept[0]:
                continue  # another chain's records, or records after the anchor, are in it
            count = await (await conn.execute(
                sql.SQL("SELECT count(*) FROM {}").format(part))).fetchone()
            await conn.execute(sql.SQL("DROP TABLE {}").format(part))
            self._partitions.discard(name)
            removed += int(count[0])
        deleted = await conn.execute("DELETE FROM records WHERE chain_id = %s AND seq <= %s",
                                     (chain_id, anchor.seq))
        removed += int(deleted.rowcount)
        await conn.execute("DELETE FROM checkpoints WHERE chain_id = %s AND seq <= %s",
                           (chain_id, anchor.seq))
        await conn.execute(
            f"INSERT INTO checkpoints ({_CHECKPOINT}) VALUES (%s,%s,%s,%s,%s,%s)",
            (chain_id, anchor.seq, "anchor", anchor.digest, anchor.created_at, anchor.signature))
        return removed

    @staticmethod
    async def _old_partitions(conn: Any, before: float) -> list[str]:
        """Partitions whose whole month lies before ``before``."""
        rows = await (await conn.execute(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = 'records'::regclass")).fetchall()
        old = []
        for (name,) in rows:
            match = _PARTITION.match(name)
            if match and month_bounds(int(match[1]), int(match[2]))[1] <= before:
                old.append(name)
        return sorted(old)
