"""Hash chaining of records and signed checkpoints (:mod:`gateway.records.audit` verifies them).

A record is stored as its *content*, the canonical JSON of the record without its chain link
(made once, on the request path), and its *link*::

    {"chain_id", "seq", "record_id", "prev_digest", "content_sha256", "stored_at"}

Its ``digest`` is ``sha256:`` + sha256 over the canonical JSON of the link; ``prev_digest`` is the
digest of the record before it in the chain (the chain's genesis digest for ``seq`` 1). So
altering a record's content changes ``content_sha256`` and with it the digest; deleting or
reordering records breaks a ``seq`` step or a ``prev_digest``; moving a record to another chain
breaks ``chain_id``. Hashing the content once, not the record with its link, keeps the writer
cheap: it never serializes a record again.

A chain alone cannot stop someone who rewrites every digest after an edit, nor show that its tail
was cut off. Checkpoints can: every ``checkpoint_every`` records the store keeps
``(chain, seq, digest)`` signed with HMAC-SHA256 (``records.signing_key``). With a key,
verification requires a valid checkpoint at every multiple of ``checkpoint_every`` up to the head
and each must match the record at its ``seq``. Retention pruning leaves a signed *anchor*: the
link of the last deleted record, where verification starts.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from dataclasses import asdict, dataclass
from typing import Any

import orjson

from gateway.records.schema import canonical_json

DIGEST_PREFIX = "sha256:"


def genesis_digest(chain_id: str) -> str:
    """The ``prev_digest`` of a chain's first record."""
    return DIGEST_PREFIX + hashlib.sha256(
        b"tiergate/records genesis\x00" + chain_id.encode()).hexdigest()


def content_sha256(content: bytes) -> str:
    return DIGEST_PREFIX + hashlib.sha256(content).hexdigest()


def link_digest(chain_id: str, seq: int, record_id: str, prev_digest: str, content: str,
                stored_at: float) -> str:
    """The digest of a link (``content``: the content's ``sha256:`` digest)."""
    return DIGEST_PREFIX + hashlib.sha256(canonical_json({
        "chain_id": chain_id, "seq": seq, "record_id": record_id, "prev_digest": prev_digest,
        "content_sha256": content, "stored_at": stored_at})).hexdigest()


@dataclass(slots=True)
class StoredRecord:
    """A record as a store holds it: its content and its link."""

    chain_id: str
    seq: int
    record_id: str
    prev_digest: str
    stored_at: float
    digest: str
    body: bytes
    """The content: canonical JSON of the record without ``chain``."""

    def link(self) -> dict[str, Any]:
        return {"chain_id": self.chain_id, "seq": self.seq, "record_id": self.record_id,
                "prev_digest": self.prev_digest, "content_sha256": content_sha256(self.body),
                "stored_at": self.stored_at, "digest": self.digest}

    def data(self) -> dict[str, Any]:
        """The whole record: its content with ``chain`` (the link) added."""
        value: dict[str, Any] = orjson.loads(self.body)
        value["chain"] = self.link()
        return value

    def document(self) -> bytes:
        """The whole record as canonical JSON (``records show|export``, the admin API): an
        auditor can check it alone — the content is it without ``chain``."""
        return canonical_json(self.data())


@dataclass(slots=True)
class Checkpoint:
    """A chain's ``(seq, digest)`` at some point, signed when a key is configured."""

    chain_id: str
    seq: int
    digest: str
    created_at: float
    kind: str = "checkpoint"
    """``checkpoint`` (periodic) or ``anchor`` (the last record removed by retention)."""
    signature: str | None = None

    def message(self) -> bytes:
        return canonical_json({"chain_id": self.chain_id, "seq": self.seq,
                               "digest": self.digest, "created_at": self.created_at,
                               "kind": self.kind})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Signer:
    """HMAC-SHA256 over a checkpoint's canonical fields (no key: checkpoints are unsigned)."""

    def __init__(self, key: bytes | None) -> None:
        self.key = key

    def checkpoint(self, chain_id: str, seq: int, digest: str, kind: str = "checkpoint"
                   ) -> Checkpoint:
        point = Checkpoint(chain_id, seq, digest, time.time(), kind)
        if self.key is not None:
            point.signature = hmac.new(self.key, point.message(), hashlib.sha256).hexdigest()
        return point

    def valid(self, point: Checkpoint) -> bool:
        if self.key is None or point.signature is None:
            return False
        expected = hmac.new(self.key, point.message(), hashlib.sha256).hexdigest()
        return hmac.compare_digest(expected, point.signature)


def check_record(stored: StoredRecord, expected_seq: int, expected_prev: str) -> str | None:
    """The problem with one link, checked against its predecessor; ``None`` when it holds."""
    computed = link_digest(stored.chain_id, stored.seq, stored.record_id, stored.prev_digest,
                           content_sha256(stored.body), stored.stored_at)
    if computed != stored.digest:
        return (f"content or link altered: the record hashes to {computed}, its stored digest "
                f"is {stored.digest}")
    if stored.seq != expected_seq:
        return (f"expected seq {expected_seq} here, found seq {stored.seq} "
                "(a record was deleted or records were reordered)")
    if stored.prev_digest != expected_prev:
        return ("prev_digest does not match the previous record's digest (a record was "
                "deleted, replaced or reordered)")
    return None
