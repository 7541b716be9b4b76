"""``tiergate records``, ``tiergate audit verify`` and ``tiergate replay``: records for auditors.

Exit codes: ``audit verify`` 0 every chain intact, 1 a broken link. ``replay`` 0 identical,
1 diverged, 3 refused (a batch: 1 if any diverged, else 3 if any was refused).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import orjson

from gateway.kernel.errors import ConfigError, NotFoundError
from gateway.settings import Settings

if TYPE_CHECKING:
    from gateway.records.replay import ReplayReport
    from gateway.records.sinks import RecordQuery, RecordSink

T = TypeVar("T")
EXIT_DIVERGED, EXIT_REFUSED = 1, 3


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser],
                 common: argparse.ArgumentParser) -> None:
    filters = argparse.ArgumentParser(add_help=False)
    filters.add_argument("--since", help="received at or after (2025-06-01, ISO time, epoch "
                         "seconds, or an age: 24h, 7d)")
    filters.add_argument("--until", help="received before")
    filters.add_argument("--route", help="the model name clients asked for")
    filters.add_argument("--model", help="a model that was called")
    filters.add_argument("--caller", help="the API key id")
    filters.add_argument("--escalated", action=argparse.BooleanOptionalAction, default=None,
                         help="only records whose router escalated (or, --no-escalated, not)")
    filters.add_argument("--chain", help="only this chain")

    records = sub.add_parser("records", parents=[common], help="list, show and export the "
                             "decode records")
    actions = records.add_subparsers(dest="records_action", required=True)
    listing = actions.add_parser("list", parents=[common, filters], help="newest first")
    listing.add_argument("--limit", type=int, default=50)
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(handler=list_records)
    show = actions.add_parser("show", parents=[common], help="one record, in full (JSON)")
    show.add_argument("record_id", metavar="RECORD_ID")
    show.set_defaults(handler=show_record)
    export = actions.add_parser("export", parents=[common, filters],
                                help="records as JSONL, oldest first")
    export.add_argument("--out", type=Path, help="write here instead of stdout")
    export.add_argument("--limit", type=int)
    export.set_defaults(handler=export_records)
    prune = actions.add_parser("prune", parents=[common], help="delete records past "
                               "records.retention_days (or --before), leaving signed anchors")
    prune.add_argument("--before", help="delete records received before this time")
    prune.set_defaults(handler=prune_records)

    audit = sub.add_parser("audit", parents=[common], help="verify the records' hash chains")
    audit_actions = audit.add_subparsers(dest="audit_action", required=True)
    verify = audit_actions.add_parser("verify", parents=[common], help="check every chain and "
                                      "name the first broken link")
    verify.add_argument("--since", help="only records received from then on")
    verify.add_argument("--chain", action="append", help="only this chain (repeatable)")
    verify.add_argument("--json", action="store_true")
    verify.set_defaults(handler=audit_verify)

    replay = sub.add_parser("replay", parents=[common], help="re-decode recorded requests and "
                            "compare the tokens")
    replay.add_argument("record_id", nargs="?", metavar="RECORD_ID")
    replay.add_argument("--since", help="replay records received from then on (a batch)")
    replay.add_argument("--sample", type=int, help="replay N records drawn at random")
    replay.add_argument("--seed", type=int, help="seed of the --sample draw")
    replay.add_argument("--allow-unpinned", action="store_true",
                        help="replay calls to upstreams whose weights digest is not pinned")
    replay.add_argument("--json", action="store_true")
    replay.set_defaults(handler=replay_command)


def _time(text: str | None, name: str) -> float | None:
    from gateway.records.sinks.base import parse_time

    if text is None:
        return None
    try:
        return parse_time(text)
    except ValueError as exc:
        raise ConfigError(f"{name}: {exc}") from exc


def _query(args: argparse.Namespace, newest_first: bool, limit: int | None) -> RecordQuery:
    from gateway.records.sinks import RecordQuery

    return RecordQuery(since=_time(args.since, "--since"), until=_time(args.until, "--until"),
                       route=args.route, model=args.model, escalated=args.escalated,
                       caller=args.caller, chain_id=args.chain, limit=limit,
                       newest_first=newest_first)


def _with_sink(settings: Settings, work: Callable[[RecordSink], Awaitable[T]]) -> T:
    from gateway.records.sinks import create_sink

    async def run() -> T:
        sink = create_sink(settings.records, create=False)
        await sink.open()
        try:
            return await work(sink)
        finally:
            await sink.aclose()

    return asyncio.run(run())


def _write(data: Any) -> None:
    sys.stdout.write(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode() + "\n")


def list_records(args: argparse.Namespace, settings: Settings) -> int:
    from gateway.records.sinks.base import format_time

    query = _query(args, newest_first=True, limit=args.limit)
    rows = _with_sink(settings, lambda sink: _collect(sink, query))
    if args.json:
        _write([row.summary() for row in rows])
        return 0
    if not rows:
        print("no records")
        return 0
    print(f"{'RECEIVED (UTC)':<24} {'RECORD':<32} {'ROUTE':<18} {'MODELS':<24} ESC "
          f"{'CALLER':<12} CHAIN:SEQ")
    for row in rows:
        print(f"{format_time(row.received_at):<24} {row.record_id:<32} {row.route:<18} "
              f"{','.join(row.models):<24} {'yes' if row.escalated else 'no ':<3} "
              f"{row.caller or '-':<12} {row.stored.chain_id}:{row.stored.seq}")
    return 0


async def _collect(sink: RecordSink, query: RecordQuery) -> list[Any]:
    return [row async for row in sink.query(query)]


def show_record(args: argparse.Namespace, settings: Settings) -> int:
    stored = _with_sink(settings, lambda sink: sink.get(args.record_id))
    if stored is None:
        raise NotFoundError(f"no record {args.record_id!r}")
    _write(stored.data())
    return 0


def export_records(args: argparse.Namespace, settings: Settings) -> int:
    query = _query(args, newest_first=False, limit=args.limit)

    async def export(sink: RecordSink) -> int:
        out = args.out.open("wb") if args.out is not None else sys.stdout.buffer
        count = 0
        try:
            async for row in sink.query(query):
                out.write(row.stored.document() + b"\n")
                count += 1
        finally:
            if args.out is not None:
                out.close()
            else:
                out.flush()
        return count

    count = _with_sink(settings, export)
    if args.out is not None:
        print(f"{count} records written to {args.out}", file=sys.stderr)
    return 0


def prune_records(args: argparse.Namespace, settings: Settings) -> int:
    import time

    from gateway.records.sinks import signer_for

    before = _time(args.before, "--before")
    if before is None:
        days = settings.records.retention_days
        if days is None:
            raise ConfigError("nothing to prune: set records.retention_days or pass --before")
        before = time.time() - days * 86400
    cutoff = before

    async def prune(sink: RecordSink) -> dict[str, int]:
        signer = signer_for(settings.records)
        return {c: await sink.prune(c, cutoff, signer) for c in await sink.chains()}

    for chain_id, removed in _with_sink(settings, prune).items():
        print(f"chain {chain_id}: {removed} records removed")
    return 0


def audit_verify(args: argparse.Namespace, settings: Settings) -> int:
    from gateway.records.audit import verify_store
    from gateway.records.sinks import signer_for

    since = _time(args.since, "--since")
    reports = _with_sink(settings, lambda sink: verify_store(
        sink, signer_for(settings.records), settings.records.checkpoint_every, since=since,
        chains=args.chain))
    if args.json:
        _write([r.to_dict() for r in reports])
        return 0 if all(r.ok for r in reports) else 1
    if not reports:
        print("no chains: the store holds no records")
    for report in reports:
        span = (f"seq {report.first_seq}..{report.last_seq}" if report.records else "empty")
        signed = "signed" if report.signed else "unsigned"
        if report.ok:
            print(f"chain {report.chain_id}: OK — {report.records} records ({span}), "
                  f"{report.checkpoints} {signed} checkpoints")
        else:
            assert report.broken is not None
            where = f" (record {report.broken.record_id})" if report.broken.record_id else ""
            print(f"chain {report.chain_id}: BROKEN at seq {report.broken.seq}{where}: "
                  f"{report.broken.problem}")
        for warning in report.warnings:
            print(f"  warning: {warning}")
    return 0 if all(r.ok for r in reports) else 1


def replay_command(args: argparse.Namespace, settings: Settings) -> int:
    from gateway.models.registry import ModelRegistry
    from gateway.records.replay import Replayer, replay_many, sample_records

    if (args.record_id is None) == (args.since is None and args.sample is None):
        raise ConfigError("replay: give a RECORD_ID, or --since T and/or --sample N")

    def progress(done: int, total: int, counts: dict[str, int]) -> None:
        if not sys.stderr.isatty() and done != total:
            return
        filled = int(30 * done / total)
        print(f"\r[{'#' * filled}{'.' * (30 - filled)}] {done}/{total}  identical "
              f"{counts['identical']}  diverged {counts['diverged']}  refused "
              f"{counts['refused']}", end="" if done != total else "\n", file=sys.stderr,
              flush=True)

    async def work(sink: RecordSink) -> tuple[list[ReplayReport], dict[str, int] | None]:
        registry = ModelRegistry(settings)
        replayer = Replayer(settings, sink, registry, allow_unpinned=args.allow_unpinned)
        try:
            if args.record_id is not None:
                return [await replayer.replay(args.record_id)], None
            ids = await sample_records(sink, _time(args.since, "--since"), args.sample,
                                       random.Random(args.seed))
            if not ids:
                return [], {"identical": 0, "diverged": 0, "refused": 0}
            return await replay_many(replayer, ids, progress)
        finally:
            await registry.aclose()

    reports, counts = _with_sink(settings, work)
    if counts is None:
        report = reports[0]
        if args.json:
            _write(report.to_dict())
        else:
            print(format_report(report))
        return {"identical": 0, "diverged": EXIT_DIVERGED}.get(report.status, EXIT_REFUSED)
    if args.json:
        _write({"summary": counts, "records": [r.to_dict() for r in reports]})
    else:
        for report in reports:
            if report.status != "identical":
                print(format_report(report))
        print(f"{sum(counts.values())} replayed: {counts['identical']} identical, "
              f"{counts['diverged']} diverged, {counts['refused']} refused")
    return EXIT_DIVERGED if counts["diverged"] else EXIT_REFUSED if counts["refused"] else 0


def format_report(report: ReplayReport) -> str:
    lines = [f"record {report.record_id}: {report.status.upper()}"]
    if report.reason:
        lines.append(f"  reason: {report.reason}")
    if report.chain is not None and report.chain["ok"]:
        lines.append(f"  chain {report.chain['chain_id']} verified through seq "
                     f"{report.chain['seq']}")
    if report.decision is not None:
        lines.append(f"  decision {report.decision.status}: {report.decision.reason}")
    for call in report.calls:
        lines.append(f"  call {call.index} {call.model} ({call.tuple_digest[:19]}): "
                     f"{call.status}")
        for choice in call.choices:
            unit = "tokens" if choice.compared == "token_ids" else "characters"
            if choice.status == "identical":
                lines.append(f"    choice {choice.index}: identical ({choice.recorded_length} "
                             f"{unit}, finish {choice.finish_reason[0]})")
                continue
            lines.append(f"    choice {choice.index}: diverged at {unit[:-1]} "
                         f"{choice.position} ({choice.recorded_length} recorded, "
                         f"{choice.replayed_length} replayed)")
            for label, token in (("recorded", choice.recorded), ("replayed", choice.replayed)):
                if token is not None:
                    lines.append(f"      {label}: id {token.token_id} {token.token!r} logprob "
                                 f"{token.logprob}")
    lines.extend(f"  warning: {w}" for w in report.warnings)
    return "\n".join(lines)
