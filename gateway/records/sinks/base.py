"""The record store interface: append batches to a hash chain, read them back.

A store serializes appends to a chain itself (a SQLite write transaction, a Redis WATCH/MULTI),
so several gateway processes or replicas can append to the same chain. Appends are idempotent by
record id: a record delivered twice (after a crash between the store's commit and the spool's
bookkeeping) is stored once.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from gateway.records.chain import (
    Checkpoint,
    Signer,
    StoredRecord,
    content_sha256,
    link_digest,
)

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}


def parse_time(text: str, now: float | None = None) -> float:
    """A time as epoch seconds from ``2025-06-01``, ``2025-06-01T12:00:00Z`` (no zone: UTC),
    epoch seconds, or an age: ``30m``, ``24h``, ``7d`` (that long before ``now``)."""
    value = text.strip()
    if len(value) > 1 and value[-1] in _UNITS:
        try:
            return (time.time() if now is None else now) - float(value[:-1]) * _UNITS[value[-1]]
        except ValueError:
            pass
    try:
        return float(value)
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise ValueError(f"not a time: {text!r} (use 2025-06-01, 2025-06-01T12:00:00Z, epoch "
                         "seconds, or an age like 24h / 7d)") from exc
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def format_time(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")[:-4] + "Z"


@dataclass(slots=True)
class RecordQuery:
    """Filters of ``tiergate records list|export`` and ``GET /admin/records``."""

    since: float | None = None
    until: float | None = None
    route: str | None = None
    model: str | None = None
    """A model that answered or was called (any call of the record)."""
    escalated: bool | None = None
    caller: str | None = None
    chain_id: str | None = None
    limit: int | None = 100
    newest_first: bool = True


@dataclass(slots=True)
class PendingRecord:
    """A record on its way to a store: its content (canonical JSON) and the columns stored
    beside it for filtering."""

    record_id: str
    received_at: float
    route: str
    models: list[str]
    escalated: bool
    caller: str | None
    body: bytes

    @classmethod
    def of(cls, record: dict[str, Any], body: bytes) -> PendingRecord:
        decision = record.get("decision") or {}
        return cls(record["record_id"], record["received_at"], record["route"],
                   [str(call["model"].get("name")) for call in record["calls"]],
                   bool(decision.get("escalated")), record.get("caller"), body)


@dataclass(slots=True)
class IndexedRecord:
    """A stored record and its filter columns."""

    stored: StoredRecord
    received_at: float
    route: str
    models: list[str]
    escalated: bool
    caller: str | None

    @property
    def record_id(self) -> str:
        return self.stored.record_id

    def summary(self) -> dict[str, Any]:
        s = self.stored
        return {"record_id": s.record_id, "chain_id": s.chain_id, "seq": s.seq,
                "received_at": self.received_at, "route": self.route, "models": self.models,
                "escalated": self.escalated, "caller": self.caller, "digest": s.digest}

    def matches(self, query: RecordQuery) -> bool:
        return ((query.since is None or self.received_at >= query.since)
                and (query.until is None or self.received_at < query.until)
                and (query.route is None or self.route == query.route)
                and (query.model is None or query.model in self.models)
                and (query.escalated is None or self.escalated == query.escalated)
                and (query.caller is None or self.caller == query.caller)
                and (query.chain_id is None or self.stored.chain_id == query.chain_id))


@dataclass(slots=True)
class ChainedBatch:
    rows: list[IndexedRecord] = field(default_factory=list)
    checkpoints: list[Checkpoint] = field(default_factory=list)


def chain_batch(chain_id: str, head: tuple[int, str], records: list[PendingRecord],
                signer: Signer, checkpoint_every: int) -> ChainedBatch:
    """Link ``records`` after ``head`` = ``(seq, digest)``; checkpoints where ``seq`` is a
    multiple of ``checkpoint_every``."""
    seq, prev = head
    batch = ChainedBatch()
    now = time.time()
    for r in records:
        seq += 1
        digest = link_digest(chain_id, seq, r.record_id, prev, content_sha256(r.body), now)
        batch.rows.append(IndexedRecord(
            StoredRecord(chain_id, seq, r.record_id, prev, now, digest, r.body),
            r.received_at, r.route, r.models, r.escalated, r.caller))
        if seq % checkpoint_every == 0:
            batch.checkpoints.append(signer.checkpoint(chain_id, seq, digest))
        prev = digest
    return batch


class RecordSink(ABC):
    """A store of decode records. Methods are coroutines; one instance per event loop."""

    name: str = "sink"

    @abstractmethod
    async def open(self) -> None:
        """Connect, create the schema if missing."""

    @abstractmethod
    async def aclose(self) -> None: ...

    @abstractmethod
    async def append(self, chain_id: str, records: list[PendingRecord], signer: Signer,
                     checkpoint_every: int) -> int:
        """Link ``records`` (in order) at the chain's head and store them in one transaction,
        skipping record ids already stored; the number stored."""

    @abstractmethod
    async def chains(self) -> list[str]: ...

    @abstractmethod
    def scan(self, chain_id: str, from_seq: int = 1) -> AsyncIterator[StoredRecord]:
        """The chain's records in stored order (by ``seq``), from ``from_seq``."""

    @abstractmethod
    async def get(self, record_id: str) -> StoredRecord | None: ...

    @abstractmethod
    def query(self, query: RecordQuery) -> AsyncIterator[IndexedRecord]:
        """Records matching ``query``, by time (newest first unless asked otherwise)."""

    @abstractmethod
    async def first_seq_since(self, chain_id: str, since: float) -> int | None:
        """The smallest ``seq`` of a record received at or after ``since``."""

    @abstractmethod
    async def checkpoints(self, chain_id: str) -> list[Checkpoint]: ...

    @abstractmethod
    async def anchor(self, chain_id: str) -> Checkpoint | None:
        """The link of the last record removed by retention (verification starts after it)."""

    @abstractmethod
    async def prune(self, chain_id: str, before: float, signer: Signer) -> int:
        """Delete the chain's oldest records received before ``before`` (a prefix of the
        chain) and leave a signed anchor; the number deleted."""
