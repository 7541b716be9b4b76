"""The trail of admin actions: who changed what, when, from what to what, why, on which replica.

Every admin action that changes the deployment writes one :class:`AdminEvent` (kinds:
``threshold``, ``ack``, ``pin``, ``unpin``, ``key_create``, ``key_rotate``, ``key_revoke``);
``GET /admin/audit/events`` reads them back, newest first. The actor is the id of the admin key
that called, never a key.

Where they are kept (:func:`open_event_log`), durably and shared by the replicas that share it:

- records in **PostgreSQL** (``records.sink = "postgres"``, a fleet): the table
  ``admin_events`` in the records schema, so every replica writes to and reads the one trail;
- otherwise the registry history SQLite (``governance.history_path``; replicas on one host
  share the file), table ``admin_events``;
- no history file either: in this process's memory only (lost at exit; said in the docs).

Writes are one row each and rare; they run in a worker thread (SQLite) or on a connection
opened for the call (PostgreSQL), never on the request path of the OpenAI API.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from abc import ABC, abstractmethod
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import orjson

from gateway.governance.history import history_db
from gateway.governance.settings import GovernanceSettings
from gateway.kernel.errors import ServiceUnavailableError
from gateway.kernel.secrets import redact, redact_error
from gateway.records.settings import RecordsSettings

KINDS = ("threshold", "ack", "pin", "unpin", "key_create", "key_rotate", "key_revoke")
_CREATE_LOCK = 0x7469_6572_6576_656E  # pg_advisory_xact_lock key: creating admin_events
COLUMNS = "id, at, kind, target, actor, before, after, reason, replica"
SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS admin_events (
    id TEXT PRIMARY KEY, at REAL NOT NULL, kind TEXT NOT NULL, target TEXT NOT NULL,
    actor TEXT, before TEXT, after TEXT, reason TEXT, replica TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS admin_events_at ON admin_events (at);
"""
POSTGRES_SCHEMA = """
CREATE TABLE IF NOT EXISTS admin_events (
    id text PRIMARY KEY, at double precision NOT NULL, kind text NOT NULL,
    target text NOT NULL, actor text, before text, after text, reason text,
    replica text NOT NULL);
CREATE INDEX IF NOT EXISTS admin_events_at ON admin_events (at);
"""


@dataclass(frozen=True, slots=True)
class AdminEvent:
    id: str
    at: float
    kind: str
    target: str
    """What changed: a route, a model, a key id."""
    actor: str | None
    """The admin key's id."""
    before: Any
    after: Any
    reason: str | None
    replica: str

    @classmethod
    def new(cls, kind: str, target: str, actor: str | None, before: Any, after: Any,
            reason: str | None, replica: str) -> AdminEvent:
        return cls(os.urandom(8).hex(), time.time(), kind, target, actor, before, after,
                   reason, replica)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def row(self) -> tuple[Any, ...]:
        return (self.id, self.at, self.kind, self.target, self.actor,
                orjson.dumps(self.before).decode(), orjson.dumps(self.after).decode(),
                self.reason, self.replica)

    @classmethod
    def of_row(cls, row: tuple[Any, ...]) -> AdminEvent:
        return cls(str(row[0]), float(row[1]), str(row[2]), str(row[3]), row[4],
                   None if row[5] is None else orjson.loads(row[5]),
                   None if row[6] is None else orjson.loads(row[6]), row[7], str(row[8]))


def _where(kind: str | None, target: str | None) -> tuple[str, tuple[Any, ...]]:
    """The ``WHERE`` clause of a listing (``?`` placeholders) and its arguments."""
    clauses, args = [], []
    for column, value in (("kind", kind), ("target", target)):
        if value is not None:
            clauses.append(f"{column} = ?")
            args.append(value)
    return (" WHERE " + " AND ".join(clauses)) if clauses else "", tuple(args)


class EventLog(ABC):
    """Where the admin events go; :meth:`list` answers newest first."""

    where: str
    """Where the trail is kept, in words (the docs and errors say it)."""

    @abstractmethod
    async def append(self, event: AdminEvent) -> None: ...

    @abstractmethod
    async def list(self, kind: str | None = None, target: str | None = None,
                   limit: int = 100) -> list[AdminEvent]: ...


class MemoryEventLog(EventLog):
    where = "this process's memory (no governance.history_path, records not in PostgreSQL)"

    def __init__(self) -> None:
        self.events: list[AdminEvent] = []

    async def append(self, event: AdminEvent) -> None:
        self.events.append(event)

    async def list(self, kind: str | None = None, target: str | None = None,
                   limit: int = 100) -> list[AdminEvent]:
        found = [e for e in reversed(self.events) if (kind is None or e.kind == kind)
                 and (target is None or e.target == target)]
        return found[:limit]


class SqliteEventLog(EventLog):
    def __init__(self, path: Path) -> None:
        self.path = path
        self.where = f"the registry history {path}"

    def _db(self) -> AbstractContextManager[sqlite3.Connection]:
        return history_db(self.path, SQLITE_SCHEMA)

    def _append(self, event: AdminEvent) -> None:
        with self._db() as db:
            db.execute(f"INSERT INTO admin_events ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       event.row())

    def _list(self, kind: str | None, target: str | None, limit: int) -> list[AdminEvent]:
        where, args = _where(kind, target)
        with self._db() as db:
            rows = db.execute(f"SELECT {COLUMNS} FROM admin_events{where} "
                              "ORDER BY at DESC, id DESC LIMIT ?", (*args, limit)).fetchall()
        return [AdminEvent.of_row(tuple(r)) for r in rows]

    async def append(self, event: AdminEvent) -> None:
        try:
            await asyncio.to_thread(self._append, event)
        except (sqlite3.Error, OSError) as exc:
            raise ServiceUnavailableError(f"the admin audit trail ({self.where}): {exc}") from exc

    async def list(self, kind: str | None = None, target: str | None = None,
                   limit: int = 100) -> list[AdminEvent]:
        try:
            return await asyncio.to_thread(self._list, kind, target, limit)
        except (sqlite3.Error, OSError) as exc:
            raise ServiceUnavailableError(f"the admin audit trail ({self.where}): {exc}") from exc


class PostgresEventLog(EventLog):
    """The records database's ``admin_events`` table (one connection per call: few calls)."""

    def __init__(self, settings: RecordsSettings) -> None:
        self.settings = settings
        self.where = (f"table admin_events of schema {settings.postgres_schema} in "
                      f"{redact(settings.postgres_url)}")
        self._ready = False
        """The table is known to exist (made once per process, under an advisory lock)."""

    async def _prepare(self, conn: Any) -> None:
        from psycopg import sql

        name = self.settings.postgres_schema
        schema = sql.Identifier(name)
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_CREATE_LOCK,))
            found = await (await conn.execute(
                "SELECT 1 FROM pg_namespace WHERE nspname = %s", (name,))).fetchone()
            if found is None:
                await conn.execute(sql.SQL("CREATE SCHEMA {}").format(schema))
            await conn.execute(sql.SQL("SET LOCAL search_path TO {}").format(schema))
            await conn.execute(POSTGRES_SCHEMA)
        self._ready = True

    async def _run(self, statement: str, args: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        import psycopg
        from psycopg import sql

        records = self.settings
        try:
            async with await psycopg.AsyncConnection.connect(
                    records.postgres_url, autocommit=True,
                    connect_timeout=max(1, round(records.postgres_connect_timeout_s)),
                    options="-c statement_timeout="
                            f"{int(records.postgres_statement_timeout_s * 1000)}") as conn:
                if not self._ready:
                    await self._prepare(conn)
                await conn.execute(sql.SQL("SET search_path TO {}").format(
                    sql.Identifier(records.postgres_schema)))
                cursor = await conn.execute(statement.replace("?", "%s"), args)
                return list(await cursor.fetchall()) if cursor.description else []
        except psycopg.Error as exc:
            raise ServiceUnavailableError(
                f"the admin audit trail ({self.where}): {redact_error(exc)}") from exc

    async def append(self, event: AdminEvent) -> None:
        await self._run(f"INSERT INTO admin_events ({COLUMNS}) VALUES "
                        "(?, ?, ?, ?, ?, ?, ?, ?, ?)", event.row())

    async def list(self, kind: str | None = None, target: str | None = None,
                   limit: int = 100) -> list[AdminEvent]:
        where, args = _where(kind, target)
        rows = await self._run(f"SELECT {COLUMNS} FROM admin_events{where} "
                               "ORDER BY at DESC, id DESC LIMIT ?", (*args, limit))
        return [AdminEvent.of_row(tuple(r)) for r in rows]


class EventsDeployment(Protocol):
    """What the trail reads of the settings (:class:`gateway.settings.Settings` is one)."""

    @property
    def records(self) -> RecordsSettings: ...
    @property
    def governance(self) -> GovernanceSettings: ...


def open_event_log(settings: EventsDeployment) -> EventLog:
    """The fleet's shared records database when there is one, else the registry history."""
    if settings.records.sink == "postgres":
        return PostgresEventLog(settings.records)
    if settings.governance.history_path is not None:
        return SqliteEventLog(settings.governance.history_path)
    return MemoryEventLog()
