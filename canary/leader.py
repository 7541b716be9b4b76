"""One leader among replicas, for work that must run once (scheduled canary runs).

With Redis, leadership is a key set with ``SET key owner NX PX ttl`` and kept by renewing it
(only by its owner, checked atomically in a Lua script) more often than it expires. A leader that
dies or hangs stops renewing; another replica takes over after at most ``ttl_s``. A replica that
cannot reach Redis is never leader: skipping a canary run is safe, running it twice is waste
but also safe, so the lock errs towards "not leader". Without Redis (one process), the process
is always the leader.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from typing import Any

log = logging.getLogger("tiergate.leader")

_RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
"""

_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('del', KEYS[1])
end
return 0
"""


class LeaderLock:
    """``await lock.acquire()`` is True while this replica leads; call it each period."""

    def __init__(self, redis_url: str | None, key: str, ttl_s: float) -> None:
        self.redis_url = redis_url
        self.key = key
        self.ttl_ms = max(1, int(ttl_s * 1000))
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        """This replica's identity in the lock (host, pid, and a nonce per lock)."""
        self.held = redis_url is None
        self._redis: Any = None

    def _client(self) -> Any:
        assert self.redis_url is not None
        if self._redis is None:
            import redis.asyncio as redis
            from redis.asyncio.retry import Retry
            from redis.backoff import NoBackoff

            self._redis = redis.from_url(self.redis_url, socket_connect_timeout=2,
                                         socket_timeout=2, retry=Retry(NoBackoff(), 0))
        return self._redis

    async def acquire(self) -> bool:
        """Take the lock or renew it; False when another replica holds it or Redis is away."""
        if self.redis_url is None:
            return True
        from redis.exceptions import RedisError

        client = self._client()
        try:
            if self.held and await client.eval(_RENEW, 1, self.key, self.owner, self.ttl_ms):
                return True
            taken = await client.set(self.key, self.owner, nx=True, px=self.ttl_ms)
        except (RedisError, OSError) as exc:
            if self.held:
                log.warning("leader lock %s: Redis unreachable (%s); stepping down",
                            self.key, exc)
            self.held = False
            return False
        if bool(taken) != self.held:
            log.info("leader lock %s: %s", self.key, "acquired" if taken else "lost")
        self.held = bool(taken)
        return self.held

    async def holder(self) -> str | None:
        """Who holds the lock now (None: nobody, or no Redis)."""
        if self.redis_url is None:
            return self.owner
        value = await self._client().get(self.key)
        return value.decode() if isinstance(value, bytes) else value

    async def release(self) -> None:
        """Give the lock up (on shutdown), so another replica need not wait for the TTL."""
        if self.redis_url is None or self._redis is None:
            return
        from redis.exceptions import RedisError

        try:
            if self.held:
                await self._redis.eval(_RELEASE, 1, self.key, self.owner)
        except (RedisError, OSError) as exc:
            log.warning("leader lock %s: release failed: %s", self.key, exc)
        finally:
            self.held = False
            await self._redis.aclose()
            self._redis = None
