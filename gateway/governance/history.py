"""Which tuple served when: the registry's history, in SQLite.

Every start of a model on a replica is a row of ``served`` (name, tuple digest, replica, when it
started and was last seen, its gate status and results, owner, eval); every tuple ever served is
a row of ``tuples`` with its whole JSON; every evaluation (an eval file seen at start, a canary
run that passed) is a row of ``evaluations``. So a decode record's tuple digest can always be
looked up, years later, and ``tiergate registry`` reads what the gateways wrote.

Replicas on one host (``--workers``) share the file (WAL mode); a fleet keeps one per replica
or moves it to the records database. Writes are few (a start, a heartbeat an hour, an
evaluation) and run in a worker thread, off the request path.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from gateway.kernel.files import create_private_file, make_private_dir

SCHEMA = """
CREATE TABLE IF NOT EXISTS tuples (
    digest TEXT PRIMARY KEY, name TEXT NOT NULL, tuple TEXT NOT NULL,
    first_seen REAL NOT NULL, last_seen REAL NOT NULL);
CREATE TABLE IF NOT EXISTS served (
    id INTEGER PRIMARY KEY, name TEXT NOT NULL, digest TEXT NOT NULL, replica TEXT NOT NULL,
    started REAL NOT NULL, last_seen REAL NOT NULL, status TEXT NOT NULL, gates TEXT NOT NULL,
    owner TEXT, eval_id TEXT, override TEXT);
CREATE INDEX IF NOT EXISTS served_name ON served (name, started);
CREATE INDEX IF NOT EXISTS served_digest ON served (digest);
CREATE TABLE IF NOT EXISTS evaluations (
    digest TEXT NOT NULL, at REAL NOT NULL, source TEXT NOT NULL, detail TEXT NOT NULL,
    PRIMARY KEY (digest, at, source));
"""


@dataclass(frozen=True, slots=True)
class Serving:
    """One start of one model on one replica."""

    id: int
    name: str
    digest: str
    replica: str
    started: float
    last_seen: float
    status: str
    gates: list[dict[str, Any]]
    owner: str | None
    eval_id: str | None
    override: str | None

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "digest": self.digest, "replica": self.replica,
                "started": self.started, "last_seen": self.last_seen, "status": self.status,
                "gates": self.gates, "owner": self.owner, "eval_id": self.eval_id,
                "override": self.override}


@contextmanager
def history_db(path: Path, schema: str) -> Iterator[sqlite3.Connection]:
    """The history file (private, WAL) with ``schema`` made, in one transaction, then closed."""
    make_private_dir(path.parent)
    create_private_file(path)
    db = sqlite3.connect(path, timeout=10.0)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.executescript(schema)
        with db:
            yield db
    finally:
        db.close()


class ServingHistory:
    """The history file; each method opens, writes or reads, and closes (few, rare calls)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _db(self) -> AbstractContextManager[sqlite3.Connection]:
        return history_db(self.path, SCHEMA)

    def started(self, name: str, model: dict[str, Any], digest: str, replica: str, status: str,
                gates: list[dict[str, Any]], owner: str | None, eval_id: str | None,
                override: str | None, now: float | None = None) -> int:
        """A model started serving ``digest`` here: its ``served`` row id."""
        now = time.time() if now is None else now
        with self._db() as db:
            db.execute("INSERT INTO tuples VALUES (?, ?, ?, ?, ?) ON CONFLICT(digest) DO UPDATE "
                       "SET last_seen = excluded.last_seen",
                       (digest, name, orjson.dumps(model).decode(), now, now))
            cursor = db.execute(
                "INSERT INTO served (name, digest, replica, started, last_seen, status, gates, "
                "owner, eval_id, override) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (name, digest, replica, now, now, status, orjson.dumps(gates).decode(), owner,
                 eval_id, override))
            assert cursor.lastrowid is not None
            return cursor.lastrowid

    def seen(self, rows: list[int], now: float | None = None) -> None:
        """The models behind ``rows`` still serve (a heartbeat, and at stop)."""
        now = time.time() if now is None else now
        with self._db() as db:
            db.executemany("UPDATE served SET last_seen = ? WHERE id = ?",
                           [(now, row) for row in rows])
            db.execute("UPDATE tuples SET last_seen = ? WHERE digest IN (SELECT digest FROM "
                       f"served WHERE id IN ({','.join('?' * len(rows))}))", (now, *rows))

    def evaluated(self, digest: str, at: float, source: str, detail: str) -> None:
        """``digest`` was evaluated at ``at`` (an eval file, a passing canary run)."""
        with self._db() as db:
            db.execute("INSERT OR IGNORE INTO evaluations VALUES (?, ?, ?, ?)",
                       (digest, at, source, detail))

    def last_evaluated(self, digest: str) -> tuple[float, str] | None:
        """When and by what ``digest`` was last evaluated."""
        with self._db() as db:
            row = db.execute("SELECT at, source FROM evaluations WHERE digest = ? ORDER BY at "
                             "DESC LIMIT 1", (digest,)).fetchone()
        return None if row is None else (float(row[0]), str(row[1]))

    def evaluation_times(self) -> dict[str, list[float]]:
        """Every tuple digest's evaluations, oldest first (``tiergate report``)."""
        with self._db() as db:
            rows = db.execute("SELECT digest, at FROM evaluations ORDER BY at").fetchall()
        times: dict[str, list[float]] = {}
        for digest, at in rows:
            times.setdefault(str(digest), []).append(float(at))
        return times

    def servings(self, name_or_digest: str | None = None) -> list[Serving]:
        """Every start (of one model name or tuple digest prefix), newest first."""
        query = "SELECT * FROM served"
        args: tuple[Any, ...] = ()
        if name_or_digest is not None:
            prefix = _digest_prefix(name_or_digest)
            query += " WHERE name = ? OR digest LIKE ?"
            args = (name_or_digest, "-" if prefix is None else prefix + "%")
        with self._db() as db:
            rows = db.execute(query + " ORDER BY started DESC, id DESC", args).fetchall()
        return [Serving(r[0], r[1], r[2], r[3], r[4], r[5], r[6], orjson.loads(r[7]), r[8],
                        r[9], r[10]) for r in rows]

    def tuple_of(self, digest: str) -> dict[str, Any] | None:
        """The whole tuple a digest (or an unambiguous prefix of one) names."""
        prefix = _digest_prefix(digest)
        if prefix is None:
            return None
        with self._db() as db:
            rows = db.execute("SELECT tuple FROM tuples WHERE digest LIKE ? LIMIT 2",
                              (prefix + "%",)).fetchall()
        if len(rows) != 1:
            return None
        found: dict[str, Any] = orjson.loads(rows[0][0])
        return found


def _digest_prefix(text: str) -> str | None:
    """``sha256:abc123…`` or ``abc123…`` (as headers show it, at least 6 hex digits) → a LIKE
    prefix (hex only: no wildcards); anything else → ``None``."""
    bare = text.removeprefix("sha256:")
    if len(bare) < 6 or any(c not in "0123456789abcdef" for c in bare):
        return None
    return "sha256:" + bare
