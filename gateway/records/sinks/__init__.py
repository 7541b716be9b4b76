"""Record stores by name (``records.sink``): ``sqlite`` (embedded default), ``redis``,
``postgres``."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType

from gateway.kernel.errors import ConfigError
from gateway.records.chain import Signer
from gateway.records.settings import RecordsSettings
from gateway.records.sinks.base import RecordQuery, RecordSink

__all__ = ["SINKS", "RecordQuery", "RecordSink", "create_sink", "signer_for"]

SinkFactory = Callable[[RecordsSettings, bool, bool], RecordSink]
"""``(settings, create, in_thread) -> an unopened sink``; imports its driver only when called."""


def _sqlite(settings: RecordsSettings, create: bool, in_thread: bool) -> RecordSink:
    from gateway.records.sinks.sqlite import SQLiteSink

    return SQLiteSink(settings.sqlite_path, create=create, in_thread=in_thread)


def _redis(settings: RecordsSettings, create: bool, in_thread: bool) -> RecordSink:
    from gateway.records.sinks.redis import RedisSink

    return RedisSink(settings.redis_url, settings.redis_stream)


def _postgres(settings: RecordsSettings, create: bool, in_thread: bool) -> RecordSink:
    from gateway.records.sinks.postgres import PostgresSink

    return PostgresSink(settings.postgres_url, settings.postgres_schema,
                        connect_timeout_s=settings.postgres_connect_timeout_s,
                        statement_timeout_s=settings.postgres_statement_timeout_s, create=create)


SINKS: Mapping[str, SinkFactory] = MappingProxyType(
    {"sqlite": _sqlite, "redis": _redis, "postgres": _postgres})
"""The record stores by name (``records.sink``)."""


def create_sink(settings: RecordsSettings, create: bool = True,
                in_thread: bool = True) -> RecordSink:
    """A new (unopened) store for ``settings``; one per event loop. ``create=False``: reading
    tools refuse a store that does not exist instead of making an empty one. ``in_thread=False``:
    a store with blocking calls (SQLite) makes them on the loop's own thread."""
    factory = SINKS.get(settings.sink)
    if factory is None:
        raise ConfigError("records are off (records.sink = \"none\"): there is no record store")
    return factory(settings, create, in_thread)


def signer_for(settings: RecordsSettings) -> Signer:
    key = settings.signing_key
    return Signer(key.get_secret_value().encode() if key is not None else None)
