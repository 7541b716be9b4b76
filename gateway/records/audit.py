"""Verifying a chain: every link, checkpoint and retention anchor, from the store or a stream.

``tiergate audit verify`` and the admin API call :func:`verify_store`; replay checks a record's
chain with :func:`verify_chain`. The first broken link is named with what is wrong there.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field
from typing import Any

from gateway.records.chain import Checkpoint, Signer, StoredRecord, check_record, genesis_digest
from gateway.records.sinks.base import RecordSink


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
