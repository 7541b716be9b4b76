"""What the SQL stores (:mod:`.sqlite`, :mod:`.postgres`) share: the columns they read, the rows
as records, and the record query as SQL read page by page.

The stores differ only in their dialect (:class:`Dialect`): the parameter mark, and how a
record's ``models`` column is stored and matched (a JSON array in SQLite, ``text[]`` in
PostgreSQL).

Pages are read by **keyset** (the next page starts after the last row's ``(received_at,
chain_id, seq)``), not by ``OFFSET``: reading a page costs the same at the end of a years-long
archive as at its start, and rows appended while an export runs do not shift the pages.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from gateway.records.chain import Checkpoint, StoredRecord
from gateway.records.sinks.base import IndexedRecord, RecordQuery

COLUMNS = ("chain_id, seq, record_id, received_at, route, models, escalated, caller, "
           "prev_digest, stored_at, digest, body")
"""The columns of an :class:`IndexedRecord`, in the order :meth:`Dialect.indexed` reads."""
STORED = "chain_id, seq, record_id, prev_digest, stored_at, digest, body"
"""The columns of a :class:`StoredRecord`, in the order :func:`stored` reads."""
PAGE = 1000

Fetch = Callable[[str, tuple[Any, ...]], Awaitable[list[Any]]]
"""Run one statement with its arguments, all rows back."""


def stored(row: tuple[Any, ...]) -> StoredRecord:
    return StoredRecord(row[0], int(row[1]), row[2], row[3], row[4], row[5], bytes(row[6]))


def checkpoint(row: tuple[Any, ...]) -> Checkpoint:
    """A checkpoint from ``chain_id, seq, kind, digest, created_at, signature``."""
    return Checkpoint(row[0], int(row[1]), row[3], row[4], row[2], row[5])


@dataclass(frozen=True, slots=True)
class Dialect:
    mark: str
    """The parameter mark: ``?`` or ``%s``."""
    has_model: str
    """A condition on ``records`` with one mark: the row's ``models`` hold that model."""
    models: Callable[[Any], list[str]]
    """The ``models`` column as a list."""

    def indexed(self, row: tuple[Any, ...]) -> IndexedRecord:
        record = StoredRecord(row[0], int(row[1]), row[2], row[8], row[9], row[10],
                              bytes(row[11]))
        return IndexedRecord(record, row[3], row[4], self.models(row[5]), bool(row[6]), row[7])

    def where(self, query: RecordQuery) -> tuple[list[str], list[Any]]:
        """The query's filters as conditions and their arguments."""
        conditions, args = [], []
        for column, op, value in (("received_at", ">=", query.since),
                                  ("received_at", "<", query.until), ("route", "=", query.route),
                                  ("caller", "=", query.caller),
                                  ("chain_id", "=", query.chain_id),
                                  ("escalated", "=", query.escalated)):
            if value is not None:
                conditions.append(f"{column} {op} {self.mark}")
                args.append(value)
        if query.model is not None:
            conditions.append(self.has_model)
            args.append(query.model)
        return conditions, args

    async def query(self, query: RecordQuery, fetch: Fetch) -> AsyncIterator[IndexedRecord]:
        """The records that match ``query``, in its order (``received_at``, then chain and
        sequence; all reversed for newest first), at most ``query.limit``."""
        conditions, args = self.where(query)
        order, after = ("DESC", "<") if query.newest_first else ("ASC", ">")
        keys = f"(received_at, chain_id, seq) {after} ({self.mark}, {self.mark}, {self.mark})"
        ordering = f"ORDER BY received_at {order}, chain_id {order}, seq {order} LIMIT {self.mark}"
        remaining = query.limit if query.limit is not None else -1
        last: tuple[Any, ...] = ()
        while remaining != 0:
            page = PAGE if remaining < 0 else min(PAGE, remaining)
            where = [*conditions, keys] if last else conditions
            sql = (f"SELECT {COLUMNS} FROM records WHERE {' AND '.join(where) or 'TRUE'} "
                   f"{ordering}")
            rows = await fetch(sql, (*args, *last, page))
            for row in rows:
                yield self.indexed(row)
            if len(rows) < page:
                return
            last = (rows[-1][3], rows[-1][0], rows[-1][1])
            remaining = remaining - len(rows) if remaining > 0 else remaining

    async def scan(self, chain_id: str, from_seq: int, fetch: Fetch
                   ) -> AsyncIterator[StoredRecord]:
        """A chain's records from ``from_seq`` on, in order."""
        seq = from_seq
        while True:
            rows = await fetch(f"SELECT {STORED} FROM records WHERE chain_id = {self.mark} "
                               f"AND seq >= {self.mark} ORDER BY seq LIMIT {self.mark}",
                               (chain_id, seq, PAGE))
            for row in rows:
                yield stored(row)
            if len(rows) < PAGE:
                return
            seq = int(rows[-1][1]) + 1
