"""The ``[records]`` settings section: where decode records go and how they are kept.

Part of :class:`gateway.settings.Settings` (``settings.records``); documented field by field in
``docs/records.md`` and ``docs/configuration.md``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from router.settings import RouteSettings


class RecordsSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sink: Literal["sqlite", "redis", "postgres", "none"] = "sqlite"
    """Where records are stored: embedded SQLite (WAL; one node), Redis Streams (several
    replicas), PostgreSQL (a fleet, years of retention; the ``postgres`` extra), or ``none``
    (no records, no ``x-tiergate-record-id`` header)."""
    sqlite_path: Path = Path("var/records.sqlite3")
    """The SQLite database (relative: to the working directory)."""
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_stream: str = "tiergate:records"
    """Key prefix in Redis: the chain ``C`` is the stream ``<redis_stream>:chain:C``."""
    postgres_url: str = "postgresql://127.0.0.1:5432/tiergate"
    """The PostgreSQL database, as a URL (``postgresql://user:password@host:5432/db``). Its
    password is masked in every error, log line and answer; or leave it out of the URL and use
    ``PGPASSWORD`` / ``~/.pgpass``."""
    postgres_schema: str = Field(default="tiergate", min_length=1, max_length=63,
                                 pattern=r"^[a-z_][a-z0-9_]*$")
    """The schema holding the tables (created when missing); one schema is one store."""
    postgres_connect_timeout_s: float = Field(default=5.0, gt=0, le=300)
    """How long connecting to PostgreSQL may take before the store counts as down."""
    postgres_statement_timeout_s: float = Field(default=60.0, gt=0, le=3600)
    """The longest one statement may run (``statement_timeout``): a stuck store fails the batch,
    which stays in the spool and is retried."""
    chain_id: str = Field(default="main", min_length=1, max_length=64,
                          pattern=r"^[A-Za-z0-9_.-]+$")
    """The hash chain this gateway appends to. Replicas sharing a store may share a chain (the
    store serializes appends) or each use their own."""
    batch_size: int = Field(default=256, ge=1, le=10_000)
    """Records written to the sink in one transaction, at most."""
    flush_interval_s: float = Field(default=0.05, gt=0, le=60)
    """How often the delivery process looks at the spool and, with ``spool_fsync = "batch"``,
    fsyncs what was written since: the window a power loss can take."""
    store_interval_s: float = Field(default=1.0, gt=0, le=60)
    """A record reaches the store at most this long (plus ``flush_interval_s``) after its
    response; sooner when ``batch_size`` records are waiting, on a flush and at shutdown. Until
    then it is in the spool. Longer means fewer, larger store transactions (each costs a commit
    and, for SQLite, an fsync)."""
    spool_dir: Path = Path("var/records-spool")
    """The local append-only spool every record is written to before its response is sent."""
    spool_fsync: Literal["always", "batch", "never"] = "batch"
    """``always``: fsync each record before its response (survives power loss; costs an fsync
    per request). ``batch``: records reach the OS before the response (survive a crash or
    kill -9 of the gateway) and are fsynced by the delivery process every ``flush_interval_s``.
    ``never``: the OS decides."""
    spool_staging: Literal["memory", "disk"] = "memory"
    """``memory``: the gateway stages each record in shared memory under ``spool_memory_dir``
    (a copy, no system call on the request path) and its delivery process copies them to
    ``spool_dir`` every ``flush_interval_s``; staged records survive the gateway and its
    delivery process being killed, not a reboot (the window ``batch`` has anyway). ``disk``:
    each record is written to ``spool_dir`` on the request path (also what ``spool_fsync =
    "always"`` does, and what happens when no shared memory can be had)."""
    spool_memory_dir: Path = Path("/dev/shm")
    """The tmpfs where records are staged (a directory per spool is made in it, ``0700``; one
    another user could have prepared is refused, and the spool written directly)."""
    spool_max_bytes: int = Field(default=1 << 30, ge=1 << 16)
    """Undelivered records the spool may hold; beyond it new requests are refused with 503
    (backpressure) until the sink catches up."""
    redact: bool = False
    """Replace every text the client sent (messages, prompt, and every parameter not listed as
    clear: stop, user, tools, response_format, unknown fields...) and every output (texts, token
    ids, logprobs, rendered prompts) by the sha256 of what was removed (docs/records.md).
    Redacted records cannot be replayed."""
    retention_days: float | None = Field(default=None, gt=0)
    """Delete records older than this (``tiergate records prune``; the delivery process prunes
    hourly). PostgreSQL drops whole monthly partitions where it can.
    ``None``: keep forever."""
    checkpoint_every: int = Field(default=1000, ge=1)
    """A checkpoint (signed when ``signing_key`` is set) every this many records of a chain."""
    signing_key: SecretStr | None = None
    """HMAC-SHA256 key that signs checkpoints and retention anchors. With a key, ``tiergate audit
    verify`` also catches a chain recomputed after an edit."""


class RecordsDeployment(Protocol):
    """What replay reads of the gateway's settings (:class:`gateway.settings.Settings` is one):
    the records section and the routes whose decisions it re-runs."""

    @property
    def records(self) -> RecordsSettings: ...
    @property
    def routes(self) -> Mapping[str, RouteSettings]: ...
