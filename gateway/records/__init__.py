"""Decode records: what answered each request, kept so it can be audited and replayed.

- :mod:`~gateway.records.schema` — the versioned :class:`DecodeRecord` and canonical JSON;
- :mod:`~gateway.records.builder` — an answered request → its record;
- :mod:`~gateway.records.recorder` — the request listener: spool first, then the store;
- :mod:`~gateway.records.spool`, :mod:`~gateway.records.staging` — the local spool and its
  shared-memory staging;
- :mod:`~gateway.records.delivery` — the delivery process (``python -m``), its messages in
  :mod:`~gateway.records.control`;
- :mod:`~gateway.records.chain` — hash chain and signed checkpoints;
  :mod:`~gateway.records.audit` — verifying them;
- :mod:`~gateway.records.sinks` — stores by name: SQLite and Redis Streams;
- :mod:`~gateway.records.replay`, :mod:`~gateway.records.decision` — re-decoding a record and
  comparing the tokens, re-running its routing decision;
The CLI (:mod:`gateway.cli.records`) and the admin API (:mod:`gateway.http.admin.records`) sit
in the layers above.

See ``docs/records.md``.
"""
