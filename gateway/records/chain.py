"""Hash chaining of records, signed checkpoints, and verification.

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
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from gateway.records.schema import canonical_json

if TYPE_CHECKING:
    from gateway.records.sinks.base import RecordSink

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


@dataclass(slots=True)
class BrokenLink:
    seq: int
    record_id: str | None
    problem: str


@dataclass(slots=True)
class ChainReport:
    chain_id: str
    ok: bool = True
    first_seq: int | None = None
    last_seq: int | None = None
    records: int = 0
    checkpoints: int = 0
    signed: bool = False
    broken: BrokenLink | None = None
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def fail(self, seq: int, record_id: str | None, problem: str) -> ChainReport:
        if self.broken is None:
            self.ok = False
            self.broken = BrokenLink(seq, record_id, problem)
        return self


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


async def verify_chain(
    chain_id: str,
    records: AsyncIterator[StoredRecord],
    checkpoints: list[Checkpoint],
    signer: Signer,
    *,
    checkpoint_every: int,
    start: int | None = None,
    anchor: Checkpoint | None = None,
    upto: int | None = None,
) -> ChainReport:
    """Walk ``records`` (in stored order) and check every link and checkpoint.

    ``start``: the ``seq`` to expect first (a ``--since`` window: its ``prev_digest`` is taken on
    trust); otherwise the chain's anchor (after pruning) or its genesis. ``upto``: stop after that
    ``seq`` (replay verifies a chain up to its record).
    """
    report = ChainReport(chain_id, signed=signer.key is not None)
    prev: str | None
    if start is not None:
        seq, prev = start, None
    elif anchor is not None:
        if signer.key is not None and not signer.valid(anchor):
            return report.fail(anchor.seq, None, "the retention anchor's signature is invalid")
        seq, prev = anchor.seq + 1, anchor.digest
    else:
        seq, prev = 1, genesis_digest(chain_id)
    digests: dict[int, str] = {}
    wanted = {p.seq for p in checkpoints}
    async for stored in records:
        if upto is not None and stored.seq > upto:
            break
        if prev is None:  # a window: trust the first record's link to its predecessor
            prev = stored.prev_digest
        problem = check_record(stored, seq, prev)
        if problem is not None:
            return report.fail(seq, stored.record_id, problem)
        digest = stored.digest
        if report.first_seq is None:
            report.first_seq = seq
        report.last_seq, report.records = seq, report.records + 1
        if seq in wanted:
            digests[seq] = digest
        prev, seq = digest, seq + 1
    if upto is not None and (report.last_seq or 0) < upto:
        return report.fail(upto, None, f"record seq {upto} is missing from the chain")
    return _check_checkpoints(report, checkpoints, digests, signer, checkpoint_every,
                              from_seq=report.first_seq or seq, upto=upto)


def _check_checkpoints(report: ChainReport, checkpoints: list[Checkpoint],
                       digests: dict[int, str], signer: Signer, every: int, *,
                       from_seq: int, upto: int | None) -> ChainReport:
    head = report.last_seq or 0
    by_seq = {p.seq: p for p in checkpoints}
    for point in sorted(checkpoints, key=lambda p: p.seq):
        if point.seq < from_seq or point.seq > (upto or point.seq):
            continue
        if point.seq > head:
            return report.fail(point.seq, None, f"checkpoint at seq {point.seq} is past the "
                               f"chain's last record {head}: records were cut off the tail")
        if digests.get(point.seq) != point.digest:
            return report.fail(point.seq, None, f"checkpoint at seq {point.seq} names digest "
                               f"{point.digest}, the record there has {digests.get(point.seq)}")
        if signer.key is not None and not signer.valid(point):
            return report.fail(point.seq, None,
                               f"checkpoint at seq {point.seq}: invalid or missing signature")
        report.checkpoints += 1
    if signer.key is not None:
        first = -(-from_seq // every) * every
        for seq in range(first, head + 1, every):
            if seq not in by_seq:
                return report.fail(seq, None, f"the signed checkpoint at seq {seq} is missing "
                                   "(checkpoints deleted, or the chain rewritten)")
    elif checkpoints:
        report.warnings.append("no signing_key configured: checkpoints checked, not their "
                               "signatures")
    return report


async def verify_store(sink: RecordSink, signer: Signer, checkpoint_every: int, *,
                       since: float | None = None, chains: list[str] | None = None
                       ) -> list[ChainReport]:
    """Verify every chain of ``sink`` (or ``chains``), from ``since`` or from the start."""
    reports = []
    for chain_id in chains if chains is not None else await sink.chains():
        anchor = await sink.anchor(chain_id)
        start = None
        if since is not None:
            start = await sink.first_seq_since(chain_id, since)
            if start is None:
                reports.append(ChainReport(chain_id, signed=signer.key is not None))
                continue
        beginning = anchor.seq + 1 if anchor else 1
        if start is not None and start <= beginning:
            start = None  # the window holds the whole chain: check it from its genesis/anchor
        from_seq = start if start is not None else beginning
        reports.append(await verify_chain(
            chain_id, sink.scan(chain_id, from_seq), await sink.checkpoints(chain_id), signer,
            checkpoint_every=checkpoint_every, start=start, anchor=anchor))
    return reports
