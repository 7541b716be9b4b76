"""Each key's limits, counted where every replica sees them: a sliding-window log per key.

**The algorithm.** Per key, a log of the requests admitted in the last 60 s (``window_s``):
each entry its time and the tokens it counts. A request is admitted when, with the entries
older than the window dropped, (1) neither the day's nor the month's spend has reached its
budget, (2) fewer than ``concurrency`` requests hold a slot, (3) fewer than ``rpm`` entries are
in the log, (4) the tokens in the log plus the request's estimate stay within ``tpm``; it is
then logged and takes a slot, all in one step (one Lua script in Redis, on Redis's clock:
atomic across replicas). On completion (:meth:`Limiter.settle`) the slot is freed, the entry's
tokens are set to the usage the answer reported, and the spend is added to the day and month.

**Its error.** Requests and concurrency are exact: no window of 60 s ever holds more than
``rpm`` admitted requests, never more than ``concurrency`` are in flight (a slot is held at
most ``concurrency_lease_s``: a crashed replica's slots come free after it). Tokens are
admitted on an estimate (the body's bytes / 4, at most ``tpm``) and reconciled after: a window
can exceed ``tpm`` by what requests in flight use beyond their estimates; a request still
running when its entry leaves the window is not reconciled. Spend is checked at admission and
charged at completion, so a budget can be overrun by the cost of the requests in flight when
it is reached (at most ``concurrency`` requests when that is set); every completion is charged
once (an atomic increment), so replicas never double-count. Day and month are UTC, by the
clock of the replica that charges.

Without Redis (:class:`LocalLimiter`) the same algorithm runs in the process: exact for one
process, per process with several workers.
"""

from __future__ import annotations

import asyncio
import logging
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from gateway.kernel.errors import QuotaExceededError, RateLimitError, ServiceUnavailableError
from gateway.kernel.secrets import redact_error
from gateway.keys.settings import KeyPolicy

log = logging.getLogger("tiergate.keys")

WINDOW_S = 60.0


@dataclass(slots=True)
class Ticket:
    """One admitted request of a limited key, settled once it is done."""

    key_id: str
    request_id: str
    policy: KeyPolicy
    tokens: int
    """Tokens counted at admission (the estimate, at most ``tpm``)."""
    enforced: bool = True
    """False: admitted unmetered (Redis unreachable, ``redis_down = "open"``)."""
    used_tokens: int | None = None
    """The usage the answer reported (prompt + completion of every model call); None: keep
    the estimate (a failed request, an embedding)."""
    spend_usd: float = 0.0


@dataclass(frozen=True, slots=True)
class Periods:
    """The budget periods at a time: their names and the seconds until each ends."""

    day: str
    month: str
    day_left_s: float
    month_left_s: float

    @classmethod
    def at(cls, now: float) -> Periods:
        moment = datetime.fromtimestamp(now, UTC)
        start = moment.replace(hour=0, minute=0, second=0, microsecond=0)
        next_day = start + timedelta(days=1)
        next_month = (start.replace(day=28) + timedelta(days=4)).replace(day=1)
        return cls(moment.strftime("%Y-%m-%d"), moment.strftime("%Y-%m"),
                   (next_day - moment).total_seconds(), (next_month - moment).total_seconds())


def refusal(kind: int, wait_s: float, policy: KeyPolicy) -> RateLimitError:
    """The 429 for a refused admission (``kind`` as the Lua script numbers it)."""
    wait_s = max(wait_s, 0.001)
    if kind == 1:
        return QuotaExceededError(
            f"The key's daily budget of ${policy.daily_budget_usd:g} is spent.", retry_after=wait_s)
    if kind == 2:
        return QuotaExceededError(
            f"The key's monthly budget of ${policy.monthly_budget_usd:g} is spent.",
            retry_after=wait_s)
    what = {3: f"{policy.concurrency} concurrent requests",
            4: f"{policy.rpm} requests per minute",
            5: f"{policy.tpm} tokens per minute"}[kind]
    return RateLimitError(f"Rate limit reached: the key may make {what}.", retry_after=wait_s)


class Limiter(ABC):
    def __init__(self, lease_s: float, window_s: float = WINDOW_S,
                 clock: Callable[[], float] = time.time) -> None:
        self.lease_s = lease_s
        self.window_s = window_s
        self.clock = clock

    @abstractmethod
    async def admit(self, key_id: str, policy: KeyPolicy, request_id: str,
                    tokens: int) -> Ticket:
        """A ticket, or :class:`RateLimitError` / :class:`QuotaExceededError` (429), or 503
        (Redis unreachable under ``redis_down = "closed"``)."""

    @abstractmethod
    async def settle(self, ticket: Ticket) -> None:
        """Free the slot, reconcile the tokens, charge the spend."""

    @abstractmethod
    async def spent(self, key_id: str) -> tuple[float, float]:
        """The key's spend today and this month (USD)."""

    @abstractmethod
    async def aclose(self) -> None:
        """Disconnect."""


@dataclass(slots=True)
class _Window:
    log: deque[tuple[float, str]] = field(default_factory=deque)
    tokens: dict[str, int] = field(default_factory=dict)
    total: int = 0
    live: dict[str, float] = field(default_factory=dict)


class LocalLimiter(Limiter):
    """The algorithm in this process (no Redis configured)."""

    def __init__(self, lease_s: float, window_s: float = WINDOW_S,
                 clock: Callable[[], float] = time.time) -> None:
        super().__init__(lease_s, window_s, clock)
        self._windows: dict[str, _Window] = {}
        self._spend: dict[str, float] = {}

    async def admit(self, key_id: str, policy: KeyPolicy, request_id: str,
                    tokens: int) -> Ticket:
        now = self.clock()
        window = self._windows.setdefault(key_id, _Window())
        while window.log and window.log[0][0] <= now - self.window_s:
            window.total -= window.tokens.pop(window.log.popleft()[1], 0)
        for rid in [r for r, until in window.live.items() if until <= now]:
            del window.live[rid]
        periods = Periods.at(now)
        if policy.daily_budget_usd is not None and \
                self._spend.get(f"{key_id}:d:{periods.day}", 0.0) >= policy.daily_budget_usd:
            raise refusal(1, periods.day_left_s, policy)
        if policy.monthly_budget_usd is not None and \
                self._spend.get(f"{key_id}:m:{periods.month}", 0.0) >= policy.monthly_budget_usd:
            raise refusal(2, periods.month_left_s, policy)
        if policy.concurrency is not None and len(window.live) >= policy.concurrency:
            raise refusal(3, 1.0, policy)
        if policy.rpm is not None and len(window.log) >= policy.rpm:
            raise refusal(4, window.log[0][0] + self.window_s - now, policy)
        need = tokens if policy.tpm is None else min(tokens, policy.tpm)
        if policy.tpm is not None and window.total + need > policy.tpm:
            excess, wait = window.total + need - policy.tpm, self.window_s
            for at, rid in window.log:
                excess -= window.tokens.get(rid, 0)
                if excess <= 0:
                    wait = at + self.window_s - now
                    break
            raise refusal(5, wait, policy)
        window.log.append((now, request_id))
        window.tokens[request_id] = need
        window.total += need
        if policy.concurrency is not None:
            window.live[request_id] = now + self.lease_s
        return Ticket(key_id, request_id, policy, need)

    async def settle(self, ticket: Ticket) -> None:
        window = self._windows.get(ticket.key_id)
        if window is not None:
            window.live.pop(ticket.request_id, None)
            counted = window.tokens.get(ticket.request_id)
            if ticket.used_tokens is not None and counted is not None:
                window.tokens[ticket.request_id] = ticket.used_tokens
                window.total += ticket.used_tokens - counted
        if ticket.spend_usd > 0:
            periods = Periods.at(self.clock())
            for name in (f"{ticket.key_id}:d:{periods.day}", f"{ticket.key_id}:m:{periods.month}"):
                self._spend[name] = self._spend.get(name, 0.0) + ticket.spend_usd

    async def aclose(self) -> None:
        self._windows.clear()

    async def spent(self, key_id: str) -> tuple[float, float]:
        periods = Periods.at(self.clock())
        return (self._spend.get(f"{key_id}:d:{periods.day}", 0.0),
                self._spend.get(f"{key_id}:m:{periods.month}", 0.0))


# KEYS: 1 log (zset: request id by ms), 2 tokens (hash), 3 token total, 4 slots (zset: request
# id by lease end), 5 day spend, 6 month spend. ARGV: 1 request id, 2 tokens, 3 rpm, 4 tpm,
# 5 concurrency, 6 day budget, 7 month budget (0: none), 8 window ms, 9 lease ms, 10 day left
# ms, 11 month left ms. Returns {0, tokens counted} or {refusal kind, wait ms}.
_ADMIT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[8])
local old = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - window)
if #old > 0 then
  local freed = 0
  for _, c in ipairs(redis.call('HMGET', KEYS[2], unpack(old))) do
    freed = freed + (tonumber(c) or 0)
  end
  redis.call('DECRBY', KEYS[3], freed)
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
  redis.call('HDEL', KEYS[2], unpack(old))
end
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now)
local day = tonumber(ARGV[6])
if day > 0 and tonumber(redis.call('GET', KEYS[5]) or '0') >= day then
  return {1, tonumber(ARGV[10])}
end
local month = tonumber(ARGV[7])
if month > 0 and tonumber(redis.call('GET', KEYS[6]) or '0') >= month then
  return {2, tonumber(ARGV[11])}
end
local slots = tonumber(ARGV[5])
if slots > 0 and redis.call('ZCARD', KEYS[4]) >= slots then return {3, 1000} end
local rpm = tonumber(ARGV[3])
if rpm > 0 and redis.call('ZCARD', KEYS[1]) >= rpm then
  local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return {4, tonumber(first[2]) + window - now}
end
local need = tonumber(ARGV[2])
local tpm = tonumber(ARGV[4])
if tpm > 0 then
  if need > tpm then need = tpm end
  local total = tonumber(redis.call('GET', KEYS[3]) or '0')
  if total + need > tpm then
    local excess, wait = total + need - tpm, window
    local entries = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
    for i = 1, #entries, 2 do
      excess = excess - (tonumber(redis.call('HGET', KEYS[2], entries[i])) or 0)
      if excess <= 0 then wait = tonumber(entries[i + 1]) + window - now; break end
    end
    return {5, wait}
  end
end
local keep = window + tonumber(ARGV[9])
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], need)
redis.call('INCRBY', KEYS[3], need)
if slots > 0 then redis.call('ZADD', KEYS[4], now + tonumber(ARGV[9]), ARGV[1]) end
for i = 1, 4 do redis.call('PEXPIRE', KEYS[i], keep) end
return {0, need}
"""

# KEYS as _ADMIT. ARGV: 1 request id, 2 used tokens (-1: keep the estimate), 3 spend (USD),
# 4 day key life s, 5 month key life s.
_SETTLE = """
redis.call('ZREM', KEYS[4], ARGV[1])
local used = tonumber(ARGV[2])
if used >= 0 then
  local counted = redis.call('HGET', KEYS[2], ARGV[1])
  if counted then
    redis.call('HSET', KEYS[2], ARGV[1], used)
    redis.call('INCRBY', KEYS[3], used - tonumber(counted))
  end
end
if tonumber(ARGV[3]) > 0 then
  redis.call('INCRBYFLOAT', KEYS[5], ARGV[3])
  redis.call('EXPIRE', KEYS[5], ARGV[4])
  redis.call('INCRBYFLOAT', KEYS[6], ARGV[3])
  redis.call('EXPIRE', KEYS[6], ARGV[5])
end
return 1
"""


class RedisLimiter(Limiter):
    """The algorithm in Redis: one script per admission, one per settlement."""

    def __init__(self, url: str, timeout_s: float, lease_s: float,
                 window_s: float = WINDOW_S, clock: Callable[[], float] = time.time) -> None:
        super().__init__(lease_s, window_s, clock)
        self.url = url
        self.timeout_s = timeout_s
        self._redis: Any = None
        self._down = False
        """Redis was unreachable at the last admission (logged once per outage)."""

    def _client(self) -> Any:
        if self._redis is None:
            import redis.asyncio as redis
            from redis.asyncio.retry import Retry
            from redis.backoff import NoBackoff

            self._redis = redis.from_url(self.url, socket_connect_timeout=self.timeout_s,
                                         socket_timeout=self.timeout_s,
                                         retry=Retry(NoBackoff(), 0))
        return self._redis

    async def aclose(self) -> None:
        if self._redis is not None:
            redis, self._redis = self._redis, None
            await redis.aclose()

    def _keys(self, key_id: str, periods: Periods) -> list[str]:
        base = f"tiergate:limits:{{{key_id}}}"  # one hash slot per key (Redis Cluster)
        return [f"{base}:log", f"{base}:tokens", f"{base}:total", f"{base}:slots",
                f"tiergate:spend:{{{key_id}}}:d:{periods.day}",
                f"tiergate:spend:{{{key_id}}}:m:{periods.month}"]

    async def _eval(self, script: str, keys: list[str], *args: Any) -> Any:
        async with asyncio.timeout(self.timeout_s):
            return await self._client().eval(script, len(keys), *keys, *args)

    async def admit(self, key_id: str, policy: KeyPolicy, request_id: str,
                    tokens: int) -> Ticket:
        from redis.exceptions import RedisError

        periods = Periods.at(self.clock())
        try:
            kind, value = await self._eval(
                _ADMIT, self._keys(key_id, periods), request_id, tokens, policy.rpm or 0,
                policy.tpm or 0, policy.concurrency or 0, policy.daily_budget_usd or 0,
                policy.monthly_budget_usd or 0, int(self.window_s * 1000),
                int(self.lease_s * 1000), int(periods.day_left_s * 1000),
                int(periods.month_left_s * 1000))
        except (RedisError, OSError, TimeoutError) as exc:
            if not self._down:
                log.warning("Redis is unreachable (%s): keys with redis_down = open are served "
                            "unmetered, the others refused (503)", redact_error(exc))
                self._down = True
            if policy.redis_down == "open":
                return Ticket(key_id, request_id, policy, tokens, enforced=False)
            raise ServiceUnavailableError(
                "The key's limits cannot be checked now (Redis is unreachable); try again.",
                code="limits_unavailable", retry_after=5) from exc
        if self._down:
            log.warning("Redis is reachable again: key limits are counted")
            self._down = False
        if kind != 0:
            raise refusal(int(kind), int(value) / 1000, policy)
        return Ticket(key_id, request_id, policy, int(value))

    async def settle(self, ticket: Ticket) -> None:
        from redis.exceptions import RedisError

        if not ticket.enforced:
            return
        periods = Periods.at(self.clock())
        used = -1 if ticket.used_tokens is None else ticket.used_tokens
        try:
            await self._eval(_SETTLE, self._keys(ticket.key_id, periods), ticket.request_id,
                             used, repr(ticket.spend_usd), int(periods.day_left_s) + 2 * 86400,
                             int(periods.month_left_s) + 32 * 86400)
        except (RedisError, OSError, TimeoutError) as exc:
            log.warning("key %s: request %s not settled (Redis unreachable: %s): its slot "
                        "frees at the lease's end, $%g not charged", ticket.key_id,
                        ticket.request_id, redact_error(exc), ticket.spend_usd)

    async def spent(self, key_id: str) -> tuple[float, float]:
        from redis.exceptions import RedisError

        keys = self._keys(key_id, Periods.at(self.clock()))
        try:
            async with asyncio.timeout(self.timeout_s):
                day, month = await self._client().mget(keys[4:])
        except (RedisError, OSError, TimeoutError) as exc:
            raise ServiceUnavailableError(f"Redis is unreachable: {redact_error(exc)}",
                                          retry_after=5) from exc
        return float(day or 0), float(month or 0)
