"""``tiergate keys``: client keys. ``new`` / ``hash`` make or hash a static key for
``[[auth.api_keys]]``; ``create``, ``list``, ``show``, ``rotate`` and ``revoke`` manage the key
store of ``[keys] store`` (the one the gateway reads: Redis, shared by every replica, or
SQLite), as ``/admin/keys`` does. A key is printed once, when it is made; the store keeps its
sha256 only."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from gateway.kernel.errors import ConfigError
from gateway.keys.limiter import Limiter, LocalLimiter, RedisLimiter
from gateway.keys.settings import KeyPolicy
from gateway.keys.store import KeyStore, digest, new_key, open_store
from gateway.settings import Settings


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser],
                 common: argparse.ArgumentParser) -> None:
    keys = sub.add_parser("keys", parents=[common], help="client API keys and their policies")
    actions = keys.add_subparsers(dest="keys_command", required=True)
    new = actions.add_parser("new", parents=[common],
                             help="a static key and its sha256 for [[auth.api_keys]]")
    new.set_defaults(handler=_new, reads_settings=False)
    hashed = actions.add_parser("hash", parents=[common], help="the sha256 of a key")
    hashed.add_argument("key")
    hashed.set_defaults(handler=_hash, reads_settings=False)

    create = actions.add_parser("create", parents=[common],
                                help="a stored key with a policy (printed once)")
    create.add_argument("id", help="the key's id: in logs and records, never the key")
    create.add_argument("--models", help="model and route names it may use, comma-separated")
    create.add_argument("--routes", help="API paths it may call, comma-separated")
    create.add_argument("--rpm", type=int, help="requests per minute")
    create.add_argument("--tpm", type=int, help="tokens per minute")
    create.add_argument("--concurrency", type=int, help="requests in flight at once")
    create.add_argument("--daily-budget", type=float, metavar="USD", help="spend per UTC day")
    create.add_argument("--monthly-budget", type=float, metavar="USD",
                        help="spend per UTC month")
    create.add_argument("--redis-down", choices=["open", "closed"], default="closed",
                        help="while Redis is unreachable: admit unmetered, or refuse (503)")
    create.set_defaults(handler=_create)
    listing = actions.add_parser("list", parents=[common], help="every stored key")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(handler=_list)
    for name, handler, text in (("show", _show, "one key, with its spend"),
                                ("rotate", _rotate, "a new secret (the old one stops working)"),
                                ("revoke", _revoke, "refuse the key from now on")):
        action = actions.add_parser(name, parents=[common], help=text)
        action.add_argument("id")
        action.set_defaults(handler=handler)


def _new(args: argparse.Namespace, settings: Settings) -> int:
    key = new_key()
    print(f"key:    {key}   (give this to the client; it is not stored)")
    print(f"sha256: {digest(key)}   (put this in [[auth.api_keys]])")
    return 0


def _hash(args: argparse.Namespace, settings: Settings) -> int:
    print(f"sha256: {digest(args.key)}   (put this in [[auth.api_keys]])")
    return 0


def _with_store(settings: Settings,
                work: Callable[[KeyStore, Limiter], Awaitable[None]]) -> int:
    store = open_store(settings.keys, settings.redis_url)
    if store is None:
        raise ConfigError('no key store: set [keys] store = "redis" or "sqlite"')
    limiter: Limiter = (LocalLimiter(settings.keys.concurrency_lease_s)
                        if settings.redis_url is None else
                        RedisLimiter(settings.redis_url, 5.0, settings.keys.concurrency_lease_s))

    async def run() -> None:
        await store.start()
        try:
            await work(store, limiter)
        finally:
            await store.aclose()
            await limiter.aclose()

    asyncio.run(run())
    return 0


def _print(record: dict[str, Any]) -> None:
    print(orjson.dumps(record, option=orjson.OPT_INDENT_2).decode())


def _create(args: argparse.Namespace, settings: Settings) -> int:
    policy = KeyPolicy(models=_split(args.models), routes=_split(args.routes), rpm=args.rpm,
                       tpm=args.tpm, concurrency=args.concurrency,
                       daily_budget_usd=args.daily_budget,
                       monthly_budget_usd=args.monthly_budget, redis_down=args.redis_down)

    async def work(store: KeyStore, limiter: Limiter) -> None:
        key, record = await store.create(args.id, policy,
                                         frozenset(k.id for k in settings.auth.api_keys))
        print(f"key: {key}   (give this to the client: it is shown once, never stored)")
        _print(record.shown())

    return _with_store(settings, work)


def _split(value: str | None) -> list[str] | None:
    return None if value is None else [p.strip() for p in value.split(",") if p.strip()]


def _list(args: argparse.Namespace, settings: Settings) -> int:
    async def work(store: KeyStore, limiter: Limiter) -> None:
        records = [r.shown() for r in await store.list()]
        if args.json:
            print(orjson.dumps(records).decode())
            return
        for r in records:
            state = "active" if r["active"] else "revoked"
            print(f"{r['id']:<24} {state:<8} {orjson.dumps(r['policy']).decode()}")

    return _with_store(settings, work)


def _show(args: argparse.Namespace, settings: Settings) -> int:
    async def work(store: KeyStore, limiter: Limiter) -> None:
        record = await store.get(args.id)
        day, month = await limiter.spent(record.id)
        _print({**record.shown(), "spent_today_usd": day, "spent_this_month_usd": month})

    return _with_store(settings, work)


def _rotate(args: argparse.Namespace, settings: Settings) -> int:
    async def work(store: KeyStore, limiter: Limiter) -> None:
        key, record = await store.rotate(args.id)
        print(f"key: {key}   (the new secret, shown once; the old one is refused from now on)")
        _print(record.shown())

    return _with_store(settings, work)


def _revoke(args: argparse.Namespace, settings: Settings) -> int:
    async def work(store: KeyStore, limiter: Limiter) -> None:
        _print((await store.revoke(args.id)).shown())

    return _with_store(settings, work)
