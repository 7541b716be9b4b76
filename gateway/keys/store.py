"""Client keys made at run time, kept hashed: :class:`KeyRecord` and the stores that hold them.

A key is ``tg-`` and 43 random URL-safe characters (256 bits); only its sha256 is stored (a
random 256-bit secret needs no slow hash: no dictionary reaches it). The plain key exists once,
in the answer to ``create`` or ``rotate``. Lookups go by digest to the store on every request,
so a revoked or rotated key is refused by every replica from the next request on.

Two stores: :class:`RedisKeyStore` (shared by every replica) and :class:`SqliteKeyStore` (the
replicas of one host). While Redis is unreachable, a replica authenticates a key it has seen
before from memory if the key's policy is ``redis_down = "open"``; any other key gets 503.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import secrets
import sqlite3
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import orjson

from gateway.kernel.errors import (
    ConflictError,
    InvalidRequestError,
    NotFoundError,
    ServiceUnavailableError,
)
from gateway.kernel.files import create_private_file, make_private_dir
from gateway.kernel.secrets import redact_error
from gateway.keys.settings import KeyPolicy, KeysSettings

KEY_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
"""What a stored key's id may be: it names the key in logs, records and Redis key names."""


def digest(key: str) -> str:
    """The sha256 of a key (hex): what stores and settings keep instead of the key."""
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    return "tg-" + secrets.token_urlsafe(32)


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """One stored key: never the key itself."""

    id: str
    sha256: str
    policy: KeyPolicy = field(default_factory=KeyPolicy)
    created: float = 0.0
    rotated: float | None = None
    revoked: float | None = None

    def to_json(self) -> bytes:
        return orjson.dumps({"id": self.id, "sha256": self.sha256,
                             "policy": self.policy.model_dump(exclude_none=True),
                             "created": self.created, "rotated": self.rotated,
                             "revoked": self.revoked})

    @classmethod
    def from_json(cls, raw: bytes | str) -> KeyRecord:
        data = orjson.loads(raw)
        return cls(id=data["id"], sha256=data["sha256"],
                   policy=KeyPolicy.model_validate(data.get("policy") or {}),
                   created=data.get("created", 0.0), rotated=data.get("rotated"),
                   revoked=data.get("revoked"))

    def shown(self) -> dict[str, Any]:
        """What the CLI and the admin API show: no digest either."""
        return {"id": self.id, "policy": self.policy.model_dump(exclude_none=True),
                "created": self.created, "rotated": self.rotated, "revoked": self.revoked,
                "active": self.revoked is None}


class KeyStore(ABC):
    """Keys by id, found by digest. ``create`` and ``rotate`` return the plain key once."""

    @abstractmethod
    async def start(self) -> None:
        """Connect (idempotent)."""

    @abstractmethod
    async def aclose(self) -> None:
        """Disconnect."""

    @abstractmethod
    async def lookup(self, sha256: str) -> KeyRecord | None:
        """The active key with this digest, or None."""

    @abstractmethod
    async def get(self, key_id: str) -> KeyRecord:
        """The key ``key_id`` (revoked ones too), or :class:`NotFoundError`."""

    @abstractmethod
    async def list(self) -> list[KeyRecord]: ...

    @abstractmethod
    async def _insert(self, record: KeyRecord) -> None:
        """Add ``record``; :class:`ConflictError` if its id exists."""

    @abstractmethod
    async def _replace(self, old: KeyRecord, new: KeyRecord) -> None:
        """Swap ``old`` (by id and digest) for ``new``, or :class:`ConflictError` if ``old``
        changed meanwhile."""

    async def create(self, key_id: str, policy: KeyPolicy,
                     reserved: frozenset[str] = frozenset()) -> tuple[str, KeyRecord]:
        """A new key ``key_id`` (not one of ``reserved``, the static keys' ids): the plain key
        (shown once) and its record."""
        if not KEY_ID.fullmatch(key_id):
            raise InvalidRequestError("A key id is 1-64 letters, digits, '.', '_' or '-', "
                                      "starting with a letter or digit.", param="id")
        if key_id in reserved:
            raise ConflictError(f"key {key_id!r} is a static key ([[auth.api_keys]])")
        key = new_key()
        record = KeyRecord(key_id, digest(key), policy, created=time.time())
        await self._insert(record)
        return key, record

    async def rotate(self, key_id: str) -> tuple[str, KeyRecord]:
        """A new secret for ``key_id``, same policy; the old one is refused from now on."""
        old = await self.get(key_id)
        if old.revoked is not None:
            raise ConflictError(f"key {key_id!r} is revoked")
        key = new_key()
        new = replace(old, sha256=digest(key), rotated=time.time())
        await self._replace(old, new)
        return key, new

    async def revoke(self, key_id: str) -> KeyRecord:
        old = await self.get(key_id)
        if old.revoked is not None:
            return old
        new = replace(old, revoked=time.time())
        await self._replace(old, new)
        return new


def open_store(settings: KeysSettings, redis_url: str | None) -> KeyStore | None:
    """The configured store (not yet started), or None (``store = "none"``)."""
    if settings.store == "redis":
        assert redis_url is not None  # the settings' validation
        return RedisKeyStore(redis_url, settings.redis_timeout_s)
    if settings.store == "sqlite":
        return SqliteKeyStore(settings.sqlite_path)
    return None


class SqliteKeyStore(KeyStore):
    """Keys in one SQLite file (WAL): shared by the processes of one host."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db: sqlite3.Connection | None = None

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            make_private_dir(self.path.parent)
            create_private_file(self.path)
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA busy_timeout=5000")
            db.execute("CREATE TABLE IF NOT EXISTS client_keys (id TEXT PRIMARY KEY, "
                       "sha256 TEXT UNIQUE, record TEXT NOT NULL)")
            self._db = db
        return self._db

    async def start(self) -> None:
        self._conn()

    async def aclose(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    async def lookup(self, sha256: str) -> KeyRecord | None:
        row = self._conn().execute("SELECT record FROM client_keys WHERE sha256 = ?",
                                   (sha256,)).fetchone()
        return None if row is None else KeyRecord.from_json(row[0])

    async def get(self, key_id: str) -> KeyRecord:
        row = self._conn().execute("SELECT record FROM client_keys WHERE id = ?",
                                   (key_id,)).fetchone()
        if row is None:
            raise NotFoundError(f"No key {key_id[:200]!r}")
        return KeyRecord.from_json(row[0])

    async def list(self) -> list[KeyRecord]:
        rows = self._conn().execute("SELECT record FROM client_keys ORDER BY id").fetchall()
        return [KeyRecord.from_json(r[0]) for r in rows]

    async def _insert(self, record: KeyRecord) -> None:
        try:
            self._conn().execute("INSERT INTO client_keys VALUES (?, ?, ?)",
                                 (record.id, record.sha256, record.to_json().decode()))
        except sqlite3.IntegrityError as exc:
            raise ConflictError(f"key {record.id!r} exists") from exc

    async def _replace(self, old: KeyRecord, new: KeyRecord) -> None:
        active = None if new.revoked is not None else new.sha256  # a revoked key has no digest
        changed = self._conn().execute(
            "UPDATE client_keys SET sha256 = ?, record = ? WHERE id = ? AND record = ?",
            (active, new.to_json().decode(), old.id, old.to_json().decode())).rowcount
        if not changed:
            raise ConflictError(f"key {old.id!r} changed meanwhile; try again")


_PREFIX = "tiergate:keys"
# KEYS: the digest index, the record's key. ARGV: the digest.
_LOOKUP = """
local id = redis.call('HGET', KEYS[1], ARGV[1])
if not id then return false end
return redis.call('GET', KEYS[2] .. id)
"""
# KEYS: the index, the record, the id set. ARGV: old record ('' for new), new record, old
# digest, new digest ('' when revoked), id.
_SWAP = """
local current = redis.call('GET', KEYS[2])
if ARGV[1] == '' then
  if current then return 0 end
elseif current ~= ARGV[1] then return 0 end
if ARGV[3] ~= '' then redis.call('HDEL', KEYS[1], ARGV[3]) end
if ARGV[4] ~= '' then redis.call('HSET', KEYS[1], ARGV[4], ARGV[5]) end
redis.call('SET', KEYS[2], ARGV[2])
redis.call('SADD', KEYS[3], ARGV[5])
return 1
"""


class RedisKeyStore(KeyStore):
    """Keys in Redis: ``tiergate:keys:rec:<id>`` (the record), ``tiergate:keys:by-sha256``
    (active digests to ids), ``tiergate:keys:ids``; every change one script."""

    def __init__(self, url: str, timeout_s: float) -> None:
        self.url = url
        self.timeout_s = timeout_s
        self._redis: Any = None
        self._seen: dict[str, KeyRecord] = {}
        """Keys this replica authenticated, for an outage (``redis_down = "open"`` ones)."""

    async def start(self) -> None:
        if self._redis is not None:
            return
        import redis.asyncio as redis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        self._redis = redis.from_url(self.url, socket_connect_timeout=self.timeout_s,
                                     socket_timeout=self.timeout_s, retry=Retry(NoBackoff(), 0))

    async def aclose(self) -> None:
        if self._redis is not None:
            redis, self._redis = self._redis, None
            await redis.aclose()

    async def _call(self, what: str, *args: Any) -> Any:
        from redis.exceptions import RedisError

        await self.start()
        try:
            async with asyncio.timeout(self.timeout_s):
                return await getattr(self._redis, what)(*args)
        except (RedisError, OSError, TimeoutError) as exc:
            raise ServiceUnavailableError(
                f"the key store (Redis) is unreachable: {redact_error(exc)}",
                code="keys_unavailable", retry_after=5) from exc

    async def lookup(self, sha256: str) -> KeyRecord | None:
        try:
            raw = await self._call("eval", _LOOKUP, 2, f"{_PREFIX}:by-sha256",
                                   f"{_PREFIX}:rec:", sha256)
        except ServiceUnavailableError:
            seen = self._seen.get(sha256)
            if seen is not None and seen.policy.redis_down == "open":
                return seen
            raise
        if raw is None:
            self._seen.pop(sha256, None)
            return None
        record = KeyRecord.from_json(raw)
        self._seen[sha256] = record
        return record

    async def get(self, key_id: str) -> KeyRecord:
        raw = await self._call("get", f"{_PREFIX}:rec:{key_id}")
        if raw is None:
            raise NotFoundError(f"No key {key_id[:200]!r}")
        return KeyRecord.from_json(raw)

    async def list(self) -> list[KeyRecord]:
        ids = sorted(i.decode() for i in await self._call("smembers", f"{_PREFIX}:ids"))
        if not ids:
            return []
        raws = await self._call("mget", [f"{_PREFIX}:rec:{i}" for i in ids])
        return [KeyRecord.from_json(r) for r in raws if r is not None]

    async def _swap(self, old: KeyRecord | None, new: KeyRecord) -> None:
        done = await self._call(
            "eval", _SWAP, 3, f"{_PREFIX}:by-sha256", f"{_PREFIX}:rec:{new.id}", f"{_PREFIX}:ids",
            b"" if old is None else old.to_json(), new.to_json(),
            "" if old is None else old.sha256, "" if new.revoked is not None else new.sha256,
            new.id)
        if not done:
            raise ConflictError(f"key {new.id!r} exists" if old is None
                                else f"key {new.id!r} changed meanwhile; try again")

    async def _insert(self, record: KeyRecord) -> None:
        await self._swap(None, record)

    async def _replace(self, old: KeyRecord, new: KeyRecord) -> None:
        await self._swap(old, new)
