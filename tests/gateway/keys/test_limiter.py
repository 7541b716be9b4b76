"""The limiter's algorithm in-process (a clock the test moves), then the same in a real Redis
shared by two limiters, as two replicas share it."""

from __future__ import annotations

import asyncio
import random
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime

import pytest

from gateway.kernel.errors import QuotaExceededError, RateLimitError, ServiceUnavailableError
from gateway.keys.limiter import LocalLimiter, Periods, RedisLimiter, Ticket
from gateway.keys.settings import KeyPolicy
from tests.conftest import RedisProcess


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


NOON = datetime(2026, 12, 7, 12, 0, tzinfo=UTC).timestamp()


def local(start: float = NOON, lease_s: float = 900.0) -> tuple[LocalLimiter, Clock]:
    clock = Clock(start)
    return LocalLimiter(lease_s, clock=clock), clock


async def test_requests_per_minute_is_a_sliding_window_never_exceeded() -> None:
    limiter, clock = local()
    policy = KeyPolicy(rpm=5)
    rng = random.Random(7)
    admitted: list[float] = []
    for i in range(400):
        clock.now += rng.expovariate(1 / 4.0)  # ~15 requests a minute against 5
        try:
            await limiter.admit("k", policy, f"r{i}", 1)
        except RateLimitError as exc:
            assert exc.code == "rate_limit_exceeded" and exc.retry_after is not None
            assert 0 < exc.retry_after <= 60
            continue
        admitted.append(clock.now)
    assert len(admitted) > 50
    for i, at in enumerate(admitted):  # no window of 60 s holds more than 5
        assert sum(1 for t in admitted[i:] if t < at + 60) <= 5


async def test_a_refused_request_waits_exactly_until_the_oldest_leaves() -> None:
    limiter, clock = local()
    policy = KeyPolicy(rpm=2)
    await limiter.admit("k", policy, "a", 1)
    clock.now += 10
    await limiter.admit("k", policy, "b", 1)
    clock.now += 5
    with pytest.raises(RateLimitError) as refused:
        await limiter.admit("k", policy, "c", 1)
    assert refused.value.retry_after == pytest.approx(45)
    assert refused.value.headers() == {"retry-after": "45"}
    clock.now += 45  # "a" leaves the window
    await limiter.admit("k", policy, "c", 1)
    with pytest.raises(RateLimitError):
        await limiter.admit("k", policy, "d", 1)


async def test_tokens_are_estimated_at_admission_and_reconciled_after() -> None:
    limiter, clock = local()
    policy = KeyPolicy(tpm=1000)
    first = await limiter.admit("k", policy, "a", 300)
    assert first.tokens == 300
    await limiter.admit("k", policy, "b", 300)
    with pytest.raises(RateLimitError, match="1000 tokens per minute"):
        await limiter.admit("k", policy, "c", 500)
    first.used_tokens = 50  # the answer used less than estimated: the difference comes back
    await limiter.settle(first)
    third = await limiter.admit("k", policy, "c", 500)
    third.used_tokens = 900  # and more: the window is over until entries leave it
    await limiter.settle(third)
    clock.now += 1
    with pytest.raises(RateLimitError) as refused:
        await limiter.admit("k", policy, "d", 1)
    assert refused.value.retry_after == pytest.approx(59)  # once "a" and "b" leave: 900 + 1


async def test_an_estimate_above_the_limit_counts_as_the_whole_limit() -> None:
    limiter, _ = local()
    ticket = await limiter.admit("k", KeyPolicy(tpm=100), "a", 10_000)
    assert ticket.tokens == 100
    with pytest.raises(RateLimitError):
        await limiter.admit("k", KeyPolicy(tpm=100), "b", 1)


async def test_concurrency_slots_free_on_settle_or_at_the_lease_end() -> None:
    limiter, clock = local(lease_s=300)
    policy = KeyPolicy(concurrency=2)
    a = await limiter.admit("k", policy, "a", 1)
    await limiter.admit("k", policy, "b", 1)
    with pytest.raises(RateLimitError, match="2 concurrent"):
        await limiter.admit("k", policy, "c", 1)
    await limiter.settle(a)
    await limiter.admit("k", policy, "c", 1)
    with pytest.raises(RateLimitError):
        await limiter.admit("k", policy, "d", 1)
    clock.now += 300  # "b" and "c" never settled (their replica died): their leases end
    await limiter.admit("k", policy, "d", 1)


async def test_a_spent_daily_budget_is_insufficient_quota_until_midnight() -> None:
    limiter, clock = local(NOON)
    policy = KeyPolicy(daily_budget_usd=1.0)
    for i in range(4):
        ticket = await limiter.admit("k", policy, f"r{i}", 1)
        ticket.spend_usd = 0.25
        await limiter.settle(ticket)
    assert await limiter.spent("k") == (1.0, 1.0)
    with pytest.raises(QuotaExceededError) as refused:
        await limiter.admit("k", policy, "r5", 1)
    body = refused.value.body()["error"]
    assert refused.value.status == 429
    assert body["type"] == body["code"] == "insufficient_quota"
    assert refused.value.retry_after == pytest.approx(12 * 3600)
    assert (await limiter.admit("other", policy, "r5", 1)).tokens == 1  # per key
    clock.now += 12 * 3600
    await limiter.admit("k", policy, "r5", 1)


async def test_a_monthly_budget_spans_the_days_of_a_month() -> None:
    limiter, clock = local(datetime(2026, 12, 30, 23, 0, tzinfo=UTC).timestamp())
    policy = KeyPolicy(daily_budget_usd=5.0, monthly_budget_usd=2.0)
    ticket = await limiter.admit("k", policy, "a", 1)
    ticket.spend_usd = 2.0
    await limiter.settle(ticket)
    clock.now += 3600  # the 31st: a new day, the same month
    with pytest.raises(QuotaExceededError, match="monthly") as refused:
        await limiter.admit("k", policy, "b", 1)
    assert refused.value.retry_after == pytest.approx(24 * 3600)
    clock.now += 24 * 3600  # January
    await limiter.admit("k", policy, "b", 1)


def test_periods_are_utc_days_and_calendar_months() -> None:
    periods = Periods.at(datetime(2028, 2, 29, 18, 0, tzinfo=UTC).timestamp())
    assert (periods.day, periods.month) == ("2028-02-29", "2028-02")
    assert periods.day_left_s == 6 * 3600 and periods.month_left_s == 6 * 3600


# --- the same algorithm in Redis, shared by two limiters (two replicas) ---


@pytest.fixture
async def replicas(redis_server: RedisProcess) -> AsyncIterator[tuple[RedisLimiter, RedisLimiter]]:
    pair = (RedisLimiter(redis_server.url, 5.0, 900.0), RedisLimiter(redis_server.url, 5.0, 900.0))
    yield pair
    for limiter in pair:
        await limiter.aclose()


async def _try(limiter: RedisLimiter, key: str, policy: KeyPolicy, tokens: int = 1
               ) -> Ticket | RateLimitError:
    try:
        return await limiter.admit(key, policy, uuid.uuid4().hex, tokens)
    except RateLimitError as exc:
        return exc


async def test_two_replicas_admit_exactly_the_limit_together(
        replicas: tuple[RedisLimiter, RedisLimiter]) -> None:
    key, policy = uuid.uuid4().hex, KeyPolicy(rpm=10, concurrency=50)
    outcomes = await asyncio.gather(*(_try(replicas[i % 2], key, policy) for i in range(40)))
    admitted = [o for o in outcomes if isinstance(o, Ticket)]
    refused = [o for o in outcomes if isinstance(o, RateLimitError)]
    assert len(admitted) == 10 and len(refused) == 30
    assert all(r.code == "rate_limit_exceeded" and 0 < (r.retry_after or 0) <= 60
               for r in refused)


async def test_two_replicas_share_slots_tokens_and_spend(
        replicas: tuple[RedisLimiter, RedisLimiter]) -> None:
    a, b = replicas
    key = uuid.uuid4().hex
    policy = KeyPolicy(concurrency=1, tpm=100, daily_budget_usd=0.3)
    first = await a.admit(key, policy, "r1", 40)
    assert isinstance(await _try(b, key, policy), RateLimitError)  # the one slot is taken
    first.used_tokens, first.spend_usd = 90, 0.1
    await a.settle(first)
    refused = await _try(b, key, policy, 20)  # 90 of 100 tokens used
    assert isinstance(refused, RateLimitError) and "tokens per minute" in refused.message
    second = await b.admit(key, policy, "r2", 10)
    second.used_tokens, second.spend_usd = 0, 0.2
    await b.settle(second)
    assert await a.spent(key) == (pytest.approx(0.3), pytest.approx(0.3))
    spent = await _try(a, key, policy)
    assert isinstance(spent, QuotaExceededError) and spent.code == "insufficient_quota"


async def test_concurrent_settlements_are_each_charged_once(
        replicas: tuple[RedisLimiter, RedisLimiter]) -> None:
    key, policy = uuid.uuid4().hex, KeyPolicy(daily_budget_usd=1000.0)
    tickets = [await replicas[i % 2].admit(key, policy, f"r{i}", 1) for i in range(50)]
    for ticket in tickets:
        ticket.spend_usd = 0.125
    await asyncio.gather(*(replicas[i % 2].settle(t) for i, t in enumerate(tickets)))
    assert await replicas[0].spent(key) == (6.25, 6.25)


async def test_the_window_slides_in_redis(redis_server: RedisProcess) -> None:
    limiter = RedisLimiter(redis_server.url, 5.0, 900.0, window_s=0.5)
    key, policy = uuid.uuid4().hex, KeyPolicy(rpm=2)
    try:
        await limiter.admit(key, policy, "a", 1)
        await limiter.admit(key, policy, "b", 1)
        refused = await _try(limiter, key, policy)
        assert isinstance(refused, RateLimitError)
        assert 0 < (refused.retry_after or 0) <= 0.5
        for _ in range(200):  # until the window has slid past "a" (a guard, not a timing)
            if isinstance(await _try(limiter, key, policy), Ticket):
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the window never slid")
    finally:
        await limiter.aclose()


@pytest.fixture
def dead_redis() -> Iterator[str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
        yield f"redis://127.0.0.1:{sock.getsockname()[1]}/0"


async def test_unreachable_redis_fails_open_or_closed_by_policy(dead_redis: str) -> None:
    limiter = RedisLimiter(dead_redis, 0.5, 900.0)
    try:
        ticket = await limiter.admit("k", KeyPolicy(rpm=1, redis_down="open"), "a", 1)
        assert not ticket.enforced
        await limiter.settle(ticket)  # nothing to settle: no error
        with pytest.raises(ServiceUnavailableError) as refused:
            await limiter.admit("k", KeyPolicy(rpm=1, redis_down="closed"), "b", 1)
        assert refused.value.status == 503 and refused.value.retry_after == 5
    finally:
        await limiter.aclose()
