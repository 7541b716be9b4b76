"""The admin API over client keys (mounted at ``/admin``, :mod:`gateway.http.admin`), the same
as ``tiergate keys create|list|show|rotate|revoke``:

- ``GET /admin/keys`` — every stored key (id, policy, created, rotated, revoked), never a key
  or its digest;
- ``POST /admin/keys`` ``{"id": ..., "policy": {...}}`` — a new key: the answer (201) carries
  the key itself, once (``cache-control: no-store``);
- ``GET /admin/keys/{id}`` — one key, with its spend today and this month;
- ``POST /admin/keys/{id}/rotate`` — a new secret for the key (the old one is refused from now
  on), shown once;
- ``DELETE /admin/keys/{id}`` — revoke the key (kept, refused on every replica).

Each change is an entry of the admin audit trail (``GET /admin/audit/events``, kinds
``key_create``, ``key_rotate``, ``key_revoke``; the key's shown record, never the key).
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from gateway.http.admin.events import record_event
from gateway.http.exchange import Call, Reply, json_reply
from gateway.http.frontdoor import Endpoint
from gateway.http.parsing import json_object
from gateway.kernel.errors import InvalidRequestError
from gateway.keys.settings import KeyPolicy
from gateway.keys.store import KeyRecord, KeyStore

_ONCE = {"cache-control": "no-store"}


def _store(call: Call) -> KeyStore:
    store = call.gateway.keys.store
    if store is None:
        raise InvalidRequestError('The key store is off: set [keys] store = "redis" or "sqlite".')
    return store


async def _shown(call: Call, record: KeyRecord) -> dict[str, Any]:
    day, month = await call.gateway.keys.limiter.spent(record.id)
    return {"object": "key", **record.shown(), "spent_today_usd": day,
            "spent_this_month_usd": month}


async def list_keys(call: Call) -> Reply:
    records = await _store(call).list()
    return json_reply({"object": "list", "data": [{"object": "key", **r.shown()}
                                                  for r in records]})


async def create_key(call: Call) -> Reply:
    store = _store(call)
    hint = 'Send {"id": "<key id>", "policy": {"rpm": 60, ...}}.'
    body = json_object(await call.body(limit=16384), hint, "id")
    key_id = body.get("id")
    if not isinstance(key_id, str):
        raise InvalidRequestError(f"'id' must be a string. {hint}", param="id")
    try:
        policy = KeyPolicy.model_validate(body.get("policy") or {})
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(p) for p in error.get("loc", ()))
        raise InvalidRequestError(f"policy.{where}: {error.get('msg')}",
                                  param=f"policy.{where}") from exc
    reserved = frozenset(k.id for k in call.gateway.settings.auth.api_keys)
    key, record = await store.create(key_id, policy, reserved)
    await record_event(call, "key_create", record.id, None, record.shown())
    return json_reply({"key": key, **await _shown(call, record)}, 201, _ONCE)


async def show_key(call: Call) -> Reply:
    return json_reply(await _shown(call, await _store(call).get(call.path_params["id"])))


async def rotate_key(call: Call) -> Reply:
    key, record = await _store(call).rotate(call.path_params["id"])
    await record_event(call, "key_rotate", record.id, None, record.shown())
    return json_reply({"key": key, **await _shown(call, record)}, headers=_ONCE)


async def revoke_key(call: Call) -> Reply:
    record = await _store(call).revoke(call.path_params["id"])
    await record_event(call, "key_revoke", record.id, None, record.shown())
    return json_reply(await _shown(call, record))


ENDPOINTS = [
    Endpoint("/keys", "GET", list_keys),
    Endpoint("/keys", "POST", create_key),
    Endpoint("/keys/{id}", "GET", show_key),
    Endpoint("/keys/{id}", "DELETE", revoke_key),
    Endpoint("/keys/{id}/rotate", "POST", rotate_key),
]
