"""Records in Redis Streams, for several gateway replicas sharing one store.

Keys, under the prefix ``records.redis_stream`` (``P``):

- ``P:chain:<C>`` — the stream of chain ``C``; the entry id of record ``seq`` is ``0-<seq>``, so
  the stream's order *is* the chain's order and Redis refuses to insert before the head;
- ``P:ids`` — hash ``record_id → "<C> <seq>"`` (lookups, idempotent appends);
- ``P:checkpoints:<C>`` — hash ``seq → checkpoint``; ``P:anchor:<C>`` — the retention anchor;
- ``P:chains`` — the set of chain ids.

An append WATCHes the chain's stream, reads its head, and adds the batch in one MULTI/EXEC;
when another replica appended in between, EXEC fails and the batch is linked again.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable
from typing import Any, TypeVar

import orjson

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

T = TypeVar("T")
_PAGE = 1000
STORE_VERSION = "1"
"""The layout of the keys below (``P:version``); a store of another layout is refused."""


def _seq(entry_id: bytes | str) -> int:
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return int(text.partition("-")[2])


def _stored(chain_id: str, entry_id: bytes, fields: dict[bytes, bytes]) -> StoredRecord:
    return StoredRecord(chain_id, _seq(entry_id), fields[b"record_id"].decode(),
                        fields[b"prev_digest"].decode(), float(fields[b"stored_at"]),
                        fields[b"digest"].decode(), fields[b"body"])


def _indexed(chain_id: str, entry_id: bytes, fields: dict[bytes, bytes]) -> IndexedRecord:
    caller = fields.get(b"caller", b"")
    return IndexedRecord(
        _stored(chain_id, entry_id, fields), float(fields[b"received_at"]),
        fields[b"route"].decode(), orjson.loads(fields[b"models"]),
        fields.get(b"escalated") == b"1", caller.decode() if caller else None)


def _checkpoint(raw: bytes) -> Checkpoint:
    data = orjson.loads(raw)
    return Checkpoint(data["chain_id"], data["seq"], data["digest"], data["created_at"],
                      data["kind"], data.get("signature"))


class RedisSink(RecordSink):
    name = "redis"

    def __init__(self, url: str, prefix: str) -> None:
        self.url = url
        self.shown_url = redact(url)
        """The URL as errors and logs show it: its password masked."""
        self.prefix = prefix
        self._client: Any = None

    def _key(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    async def _do(self, command: Awaitable[T]) -> T:
        """Await one command; Redis failures become the gateway's 503."""
        from redis.exceptions import RedisError

        try:
            return await command
        except RedisError as exc:
            raise ServiceUnavailableError(
                f"record store {self.shown_url}: {redact_error(exc)}") from exc

    @property
    def client(self) -> Any:
        if self._client is None:
            raise ServiceUnavailableError("the record store is closed")
        return self._client

    async def open(self) -> None:
        import redis.asyncio as redis
        from redis.exceptions import RedisError

        if self._client is None:
            self._client = redis.Redis.from_url(self.url, socket_connect_timeout=2.0,
                                                socket_timeout=10.0)
        try:
            await self._client.ping()
            key = self._key("version")
            await self._client.setnx(key, STORE_VERSION)
            version = await self._client.get(key)
        except RedisError as exc:
            raise ServiceUnavailableError(
                f"record store {self.shown_url}: {redact_error(exc)}") from exc
        if version != STORE_VERSION.encode():
            raise ServiceUnavailableError(
                f"record store {self.shown_url} ({self.prefix}) has layout version {version!r}, "
                f"this tiergate writes version {STORE_VERSION}: use another records.redis_stream")

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    async def _head(self, pipe: Any, chain_id: str) -> tuple[int, str]:
        last = await pipe.xrevrange(self._key("chain", chain_id), count=1)
        if last:
            entry_id, fields = last[0]
            return _seq(entry_id), fields[b"digest"].decode()
        anchor = await pipe.get(self._key("anchor", chain_id))
        if anchor is not None:
            point = _checkpoint(anchor)
            return point.seq, point.digest
        return 0, genesis_digest(chain_id)

    async def append(self, chain_id: str, records: list[PendingRecord], signer: Signer,
                     checkpoint_every: int) -> int:
        from redis.exceptions import RedisError, WatchError

        stream = self._key("chain", chain_id)
        ids = [r.record_id for r in records]
        try:
            known = {i for i, v in zip(ids, await self.client.hmget(self._key("ids"), ids),
                                       strict=True) if v is not None}
            fresh = [r for r in records if r.record_id not in known]
            if not fresh:
                return 0
            async with self.client.pipeline(transaction=True) as pipe:
                while True:
                    try:
                        await pipe.watch(stream, self._key("anchor", chain_id))
                        head = await self._head(pipe, chain_id)
                        batch = chain_batch(chain_id, head, fresh, signer, checkpoint_every)
                        pipe.multi()
                        for row in batch.rows:
                            link = row.stored
                            pipe.xadd(stream, {
                                "record_id": link.record_id,
                                "received_at": repr(row.received_at), "route": row.route,
                                "models": orjson.dumps(row.models),
                                "escalated": "1" if row.escalated else "0",
                                "caller": row.caller or "", "prev_digest": link.prev_digest,
                                "stored_at": repr(link.stored_at), "digest": link.digest,
                                "body": link.body}, id=f"0-{link.seq}")
                        pipe.hset(self._key("ids"), mapping={
                            row.record_id: f"{chain_id} {row.stored.seq}" for row in batch.rows})
                        if batch.checkpoints:
                            pipe.hset(self._key("checkpoints", chain_id), mapping={
                                str(p.seq): orjson.dumps(p.to_dict()) for p in batch.checkpoints})
                        pipe.sadd(self._key("chains"), chain_id)
                        await pipe.execute()
                        return len(batch.rows)
                    except WatchError:
                        continue
        except RedisError as exc:
            raise ServiceUnavailableError(
                f"record store {self.shown_url}: {redact_error(exc)}") from exc

    async def chains(self) -> list[str]:
        members = await self._do(self.client.smembers(self._key("chains")))
        return sorted(m.decode() for m in members)

    async def _entries(self, chain_id: str, from_seq: int = 1
                       ) -> AsyncIterator[tuple[bytes, dict[bytes, bytes]]]:
        start = f"0-{max(from_seq, 1)}"
        stream = self._key("chain", chain_id)
        while True:
            page = await self._do(self.client.xrange(stream, min=start, max="+", count=_PAGE))
            for entry in page:
                yield entry
            if len(page) < _PAGE:
                return
            start = f"0-{_seq(page[-1][0]) + 1}"

    async def scan(self, chain_id: str, from_seq: int = 1) -> AsyncIterator[StoredRecord]:
        async for entry_id, fields in self._entries(chain_id, from_seq):
            yield _stored(chain_id, entry_id, fields)

    async def get(self, record_id: str) -> StoredRecord | None:
        where = await self._do(self.client.hget(self._key("ids"), record_id))
        if where is None:
            return None
        chain_id, _, seq = where.decode().partition(" ")
        found = await self._do(self.client.xrange(self._key("chain", chain_id),
                                                  min=f"0-{seq}", max=f"0-{seq}"))
        if not found:
            return None
        entry_id, fields = found[0]
        return _stored(chain_id, entry_id, fields)

    async def query(self, query: RecordQuery) -> AsyncIterator[IndexedRecord]:
        """Scans the chains (O(records)); fine for audits, not for dashboards."""
        chains = [query.chain_id] if query.chain_id else await self.chains()
        found = []
        for chain_id in chains:
            async for entry_id, fields in self._entries(chain_id):
                row = _indexed(chain_id, entry_id, fields)
                if row.matches(query):
                    found.append(row)
        found.sort(key=lambda r: (r.received_at, r.stored.chain_id, r.stored.seq),
                   reverse=query.newest_first)
        for row in found[: query.limit] if query.limit is not None else found:
            yield row

    async def first_seq_since(self, chain_id: str, since: float) -> int | None:
        first = None
        async for entry_id, fields in self._entries(chain_id):
            if float(fields[b"received_at"]) >= since:
                seq = _seq(entry_id)
                first = seq if first is None else min(first, seq)
        return first

    async def checkpoints(self, chain_id: str) -> list[Checkpoint]:
        raw = await self._do(self.client.hvals(self._key("checkpoints", chain_id)))
        return sorted((_checkpoint(r) for r in raw), key=lambda p: p.seq)

    async def anchor(self, chain_id: str) -> Checkpoint | None:
        raw = await self._do(self.client.get(self._key("anchor", chain_id)))
        return None if raw is None else _checkpoint(raw)

    async def prune(self, chain_id: str, before: float, signer: Signer) -> int:
        last: tuple[int, str, str] | None = None
        doomed: list[str] = []
        async for entry_id, fields in self._entries(chain_id):
            if float(fields[b"received_at"]) >= before:
                break
            last = (_seq(entry_id), fields[b"digest"].decode(), fields[b"record_id"].decode())
            doomed.append(last[2])
        if last is None:
            return 0
        anchor = signer.checkpoint(chain_id, last[0], last[1], kind="anchor")
        stale = [p for p in await self._do(self.client.hkeys(self._key("checkpoints", chain_id)))
                 if int(p) <= anchor.seq]
        await self._do(self._prune(chain_id, anchor, doomed, stale))
        return len(doomed)

    async def _prune(self, chain_id: str, anchor: Checkpoint, doomed: list[str],
                     stale: list[bytes]) -> None:
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.set(self._key("anchor", chain_id), orjson.dumps(anchor.to_dict()))
            pipe.xtrim(self._key("chain", chain_id), minid=f"0-{anchor.seq + 1}",
                       approximate=False)
            for i in range(0, len(doomed), 1000):
                pipe.hdel(self._key("ids"), *doomed[i:i + 1000])
            if stale:
                pipe.hdel(self._key("checkpoints", chain_id), *stale)
            await pipe.execute()
