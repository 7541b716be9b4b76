"""The ``[keys]`` section (where client keys are kept) and :class:`KeyPolicy`, what one key may
do: models, API paths, requests, tokens and concurrent requests, and spend per day and month.
Every field is documented in ``docs/configuration.md`` ("Client keys and their policies")."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from gateway.kernel.settings import Section


class KeyPolicy(Section):
    """What a client key may do. Unset fields: no limit."""

    models: list[str] | None = None
    """Model and route names the key may ask for (``model`` of the body); unset: all."""
    routes: list[str] | None = None
    """API paths the key may call (``/v1/chat/completions``, ``/v1/embeddings``, ...); unset:
    every client path."""
    rpm: int | None = Field(default=None, ge=1)
    """Requests per minute (a sliding window of 60 s)."""
    tpm: int | None = Field(default=None, ge=1)
    """Tokens per minute: estimated at admission, reconciled to the usage after completion."""
    concurrency: int | None = Field(default=None, ge=1)
    """Requests in flight at once."""
    daily_budget_usd: float | None = Field(default=None, gt=0)
    """Spend per UTC day; spent: 429 ``insufficient_quota`` until the next day."""
    monthly_budget_usd: float | None = Field(default=None, gt=0)
    """Spend per UTC calendar month."""
    redis_down: Literal["open", "closed"] = "closed"
    """While the limits' Redis is unreachable: ``open`` admits the key's requests unmetered,
    ``closed`` refuses them (503 ``service_unavailable``)."""

    @property
    def limited(self) -> bool:
        """Whether a request of this key is counted (rates, concurrency or spend)."""
        return any(v is not None for v in (self.rpm, self.tpm, self.concurrency,
                                          self.daily_budget_usd, self.monthly_budget_usd))


class KeysSettings(Section):
    store: Literal["none", "sqlite", "redis"] = "none"
    """Where keys made by ``tiergate keys create`` and ``/admin/keys`` are kept: ``redis``
    (``redis_url``, shared by every replica), ``sqlite`` (``sqlite_path``, one host), or none
    (only the static ``[[auth.api_keys]]``). With a store, the OpenAI surface needs a key."""
    sqlite_path: Path = Path("var/keys.sqlite3")
    """The SQLite key store (``store = "sqlite"``)."""
    redis_timeout_s: float = Field(default=0.5, gt=0, le=30)
    """How long a key lookup or a limit check waits for Redis before Redis counts as
    unreachable (then each key's ``redis_down``)."""
    concurrency_lease_s: float = Field(default=900.0, gt=0)
    """How long a request's concurrency slot is held at most: the slots of a replica that died
    mid-request come free after it."""


class ClientKey(Section):
    """A static client key (``[[auth.api_keys]]``), stored as the sha256 of the key (``tiergate
    keys hash``), never in clear, with its policy (``policy = {rpm = 60, ...}``)."""

    id: str
    """Shown in logs and records as the caller."""
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    policy: KeyPolicy = Field(default_factory=KeyPolicy)
