"""Client keys at the front door: who is calling (:meth:`KeyGate.authenticate`), may they make
this request (:meth:`KeyGate.admit`), and what it used once done (:meth:`KeyGate.release`).

The front door (:mod:`gateway.http.frontdoor`) calls these three, once per request; nothing else
does. Keys come from the settings (``[[auth.api_keys]]``, each with an optional policy) and from
the key store (:mod:`gateway.keys.store`); limits are counted by a :class:`Limiter`.

**Tokens per minute, the rule.** At admission a request counts ``ceil(body bytes / 4)`` tokens
(at most ``tpm``): an estimate of its prompt. When it completes, its entry is set to the usage
its answer reported: prompt and completion tokens of every model call made for it (a cascade's
small and large call). A failed request, an embedding and a request outliving the window keep
the estimate.

**Spend.** The budgets are charged after completion with the completed request's ``cost_usd``:
every call priced by the cost model (:mod:`gateway.models.cost`; a model without a price
costs 0).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import orjson

from gateway.kernel.errors import AuthenticationError, PermissionDeniedError
from gateway.keys.limiter import Limiter, Ticket
from gateway.keys.settings import ClientKey, KeyPolicy
from gateway.keys.store import KeyStore
from gateway.listener import CompletedRequest, RequestListener

log = logging.getLogger("tiergate.keys")



def used_tokens(done: CompletedRequest) -> int:
    """Prompt and completion tokens of every model call made for a request."""
    return sum(r.usage.prompt_tokens + r.usage.completion_tokens for r in done.results)




def estimate_tokens(body: bytes) -> int:
    """A request's tokens at admission: its body's bytes / 4, rounded up."""
    return (len(body) + 3) // 4


@dataclass(frozen=True, slots=True)
class Caller:
    """An authenticated client key: its id (logs, records) and policy."""

    id: str
    policy: KeyPolicy


class UsageListener(RequestListener):
    """Notes what a completed request used on its ticket (its usage, its cost)."""

    name = "keys"

    def __init__(self) -> None:
        self.pending: dict[str, Ticket] = {}
        """Tickets of requests in flight, by request id."""

    def completed(self, done: CompletedRequest) -> None:
        ticket = self.pending.get(done.ctx.request_id)
        if ticket is not None:
            ticket.used_tokens = used_tokens(done)
            ticket.spend_usd = done.cost_usd


class KeyGate:
    """Authentication and policies of client keys; :attr:`usage` is the request listener that
    hears what a request used (settled by :meth:`release`)."""

    def __init__(self, static: list[ClientKey], store: KeyStore | None,
                 limiter: Limiter) -> None:
        self._static = [(bytes.fromhex(k.sha256), Caller(k.id, k.policy)) for k in static]
        self.store = store
        self.enabled = bool(self._static) or store is not None
        """Whether the OpenAI surface needs a key (static keys or a store configured)."""
        self.limiter = limiter
        self.usage = UsageListener()
        self._settling: set[asyncio.Task[None]] = set()

    async def authenticate(self, authorization: str | None) -> Caller | None:
        """The caller of ``Authorization: Bearer <key>``; None when no key is configured (an
        open gateway); 401 for a missing, unknown, rotated-out or revoked key."""
        if not self.enabled:
            return None
        if not authorization or not authorization.lower().startswith("bearer "):
            raise AuthenticationError("Missing API key: send 'Authorization: Bearer <key>'.")
        digest = hashlib.sha256(authorization[7:].strip().encode()).digest()
        found = None
        for expected, caller in self._static:  # no early exit: same time for every key
            if hmac.compare_digest(digest, expected):
                found = caller
        if found is None and self.store is not None:
            record = await self.store.lookup(digest.hex())
            if record is not None:
                found = Caller(record.id, record.policy)
        if found is None:
            raise AuthenticationError("Incorrect API key provided.")
        return found

    async def admit(self, caller: Caller, path: str, request_id: str,
                    body: Callable[[], Awaitable[bytes]] | None) -> Ticket | None:
        """Hold a request to its key's policy: the path, then, for a metered request (one
        that serves a model: ``body`` reads its body, read only when the policy needs it),
        the model and the limits. A ticket for a counted request, to :meth:`release` once it
        is answered."""
        policy = caller.policy
        if policy.routes is not None and path not in policy.routes:
            raise PermissionDeniedError(f"This key may not call {path[:200]}.",
                                        code="route_not_allowed")
        if body is None or not (policy.limited or policy.models is not None):
            return None
        raw = await body() if policy.models is not None or policy.tpm is not None else b""
        if policy.models is not None:
            model = _model_of(raw)
            if model is not None and model not in policy.models:
                raise PermissionDeniedError(f"This key may not use the model {model[:200]!r}.",
                                            param="model", code="model_not_allowed")
        if not policy.limited:
            return None
        ticket = await self.limiter.admit(caller.id, policy, request_id, estimate_tokens(raw))
        self.usage.pending[request_id] = ticket
        return ticket

    async def release(self, ticket: Ticket) -> None:
        """The request is answered: settle its ticket (free its slot, reconcile its tokens,
        charge its spend). A cancelled caller (the server stopping) leaves the settlement
        running to its end."""
        self.usage.pending.pop(ticket.request_id, None)
        task = asyncio.get_running_loop().create_task(self.limiter.settle(ticket))
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)
        await asyncio.shield(task)

    async def start(self) -> None:
        if self.store is not None:
            await self.store.start()

    async def aclose(self) -> None:
        if self._settling:
            await asyncio.wait(self._settling, timeout=5.0)
        if self.store is not None:
            await self.store.aclose()
        await self.limiter.aclose()


def _model_of(body: bytes) -> str | None:
    """The ``model`` of a JSON body, or None (the route's parsing answers a bad body)."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    model = data.get("model") if isinstance(data, dict) else None
    return model if isinstance(model, str) else None
