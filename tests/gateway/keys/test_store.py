"""The key stores (SQLite, Redis): create, find by digest, rotate, revoke; never the key."""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis

from gateway.kernel.errors import (
    ConflictError,
    InvalidRequestError,
    NotFoundError,
    ServiceUnavailableError,
)
from gateway.keys.settings import KeyPolicy
from gateway.keys.store import KeyStore, RedisKeyStore, SqliteKeyStore, digest
from tests.conftest import RedisProcess


@pytest.fixture(params=["sqlite", "redis"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[KeyStore]:
    made: KeyStore
    if request.param == "sqlite":
        made = SqliteKeyStore(tmp_path / "keys" / "keys.sqlite3")
    else:
        server: RedisProcess = request.getfixturevalue("redis_server")
        url = server.url.removesuffix("/0") + "/7"  # a database of its own, emptied
        redis.Redis.from_url(url).flushdb()
        made = RedisKeyStore(url, 2.0)
    await made.start()
    yield made
    await made.aclose()


def stored_bytes(store: KeyStore) -> bytes:
    """Everything the store holds, as bytes."""
    if isinstance(store, SqliteKeyStore):
        with sqlite3.connect(store.path) as db:
            rows = db.execute("SELECT * FROM client_keys").fetchall()
        return repr(rows).encode() + store.path.read_bytes()
    assert isinstance(store, RedisKeyStore)
    client = redis.Redis.from_url(store.url)
    return b"".join(k + (client.dump(k) or b"") for k in client.keys("*"))


async def test_a_created_key_is_found_by_its_digest_and_never_stored(store: KeyStore) -> None:
    policy = KeyPolicy(rpm=60, models=["echo"])
    key, record = await store.create("team-a", policy)
    assert key.startswith("tg-") and len(key) > 40
    found = await store.lookup(digest(key))
    assert found is not None and found.id == "team-a" and found.policy == policy
    assert await store.lookup(digest(key + "x")) is None
    assert key.encode() not in stored_bytes(store)
    assert key not in str(record.shown()) and record.sha256 not in str(record.shown())
    assert [r.id for r in await store.list()] == ["team-a"]


async def test_rotation_retires_the_old_secret(store: KeyStore) -> None:
    old, _ = await store.create("team-a", KeyPolicy(tpm=10))
    new, record = await store.rotate("team-a")
    assert new != old and record.rotated is not None
    assert await store.lookup(digest(old)) is None
    rotated = await store.lookup(digest(new))
    assert rotated is not None and rotated.policy == KeyPolicy(tpm=10)


async def test_a_revoked_key_is_kept_and_refused(store: KeyStore) -> None:
    key, _ = await store.create("team-a", KeyPolicy())
    revoked = await store.revoke("team-a")
    assert revoked.revoked is not None and not revoked.shown()["active"]
    assert await store.lookup(digest(key)) is None
    assert (await store.get("team-a")).revoked == revoked.revoked
    with pytest.raises(ConflictError):
        await store.rotate("team-a")


async def test_ids_are_checked(store: KeyStore) -> None:
    await store.create("team-a", KeyPolicy())
    with pytest.raises(ConflictError):
        await store.create("team-a", KeyPolicy())
    with pytest.raises(ConflictError, match="static"):
        await store.create("ops", KeyPolicy(), reserved=frozenset({"ops"}))
    with pytest.raises(InvalidRequestError):
        await store.create("bad id!", KeyPolicy())
    with pytest.raises(NotFoundError):
        await store.get("nobody")


async def test_redis_down_authenticates_only_seen_fail_open_keys(
        redis_server: RedisProcess) -> None:
    store = RedisKeyStore(redis_server.url, 1.0)
    open_key, _ = await store.create(f"o{uuid.uuid4().hex}", KeyPolicy(redis_down="open"))
    closed_key, _ = await store.create(f"c{uuid.uuid4().hex}", KeyPolicy(redis_down="closed"))
    for key in (open_key, closed_key):
        assert await store.lookup(digest(key)) is not None  # seen by this replica
    store.url = "redis://127.0.0.1:1/0"  # the replica loses Redis
    await store.aclose()
    try:
        assert await store.lookup(digest(open_key)) is not None
        with pytest.raises(ServiceUnavailableError):
            await store.lookup(digest(closed_key))
        with pytest.raises(ServiceUnavailableError):
            await store.lookup(digest("tg-never-seen"))
    finally:
        await store.aclose()
