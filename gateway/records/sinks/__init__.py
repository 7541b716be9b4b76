"""Record stores by name (``records.sink``): ``sqlite`` (embedded default), ``redis``."""

from __future__ import annotations

from gateway.errors import ConfigError
from gateway.records.chain import Signer
from gateway.records.settings import RecordsSettings
from gateway.records.sinks.base import RecordQuery, RecordSink

__all__ = ["RecordQuery", "RecordSink", "create_sink", "signer_for"]


def create_sink(settings: RecordsSettings, create: bool = True,
                in_thread: bool = True) -> RecordSink:
    """A new (unopened) store for ``settings``; one per event loop. ``create=False``: reading
    tools refuse a store that does not exist instead of making an empty one. ``in_thread=False``:
    a store with blocking calls (SQLite) makes them on the loop's own thread."""
    if settings.sink == "sqlite":
        from gateway.records.sinks.sqlite import SQLiteSink

        return SQLiteSink(settings.sqlite_path, create=create, in_thread=in_thread)
    if settings.sink == "redis":
        from gateway.records.sinks.redis import RedisSink

        return RedisSink(settings.redis_url, settings.redis_stream)
    raise ConfigError("records are off (records.sink = \"none\"): there is no record store")


def signer_for(settings: RecordsSettings) -> Signer:
    key = settings.signing_key
    return Signer(key.get_secret_value().encode() if key is not None else None)
