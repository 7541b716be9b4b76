"""Decode records: what answered each request, kept so it can be audited and replayed.

- :mod:`~gateway.records.schema` — the versioned :class:`DecodeRecord` and canonical JSON;
- :mod:`~gateway.records.builder` — an answered request → its record;
- :mod:`~gateway.records.recorder` — the completion listener: spool first, then the store;
- :mod:`~gateway.records.chain` — hash chain, signed checkpoints, verification;
- :mod:`~gateway.records.sinks` — SQLite and Redis Streams stores;
- :mod:`~gateway.records.replay` — re-decoding a record and comparing the tokens;
- :mod:`~gateway.records.commands`, :mod:`~gateway.records.admin` — CLI and admin API.

See ``docs/records.md``.
"""
