"""``tiergate report [--since T] [--route R] [--json]``: the team's numbers over a window, in
sections.

Each section (:data:`SECTIONS`, by name) collects its figures from what the gateways wrote down
and prints them; a section whose sources cannot be read says so and the others still print.
``governance`` (:mod:`gateway.governance.numbers`): eval coverage of the served tuples and of
the traffic, owners, stale, refused and overridden tuples, drift catches. ``savings``
(:mod:`gateway.cli.savings`, :mod:`gateway.governance.savings`): per route, what it cost against
always-large and always-small, and the quality it keeps. It loads no model.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from gateway.cli.savings import collect_savings, savings_lines
from gateway.kernel.errors import ConfigError
from gateway.settings import Settings

if TYPE_CHECKING:
    from gateway.governance.numbers import Window


@dataclass(frozen=True, slots=True)
class Section:
    title: str
    collect: Callable[[Settings, Window, argparse.Namespace], Awaitable[dict[str, Any]]]
    """Its figures over the window (the command's arguments: ``--route``, ...)."""
    lines: Callable[[dict[str, Any]], list[str]]


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser],
                 common: argparse.ArgumentParser) -> None:
    report = sub.add_parser("report", parents=[common],
                            help="the team's numbers over a window: eval coverage of tuples and "
                                 "traffic, owners, stale/refused/overridden tuples, drift catches")
    report.add_argument("--since", help="from (2025-06-01, ISO time, epoch seconds, or an age: "
                        "24h, 7d); default: everything recorded")
    report.add_argument("--route", help="savings: only this route (a configured route or a "
                        "model asked for by name)")
    report.add_argument("--task-set", type=Path, help="savings: grade the records whose input "
                        "is an item of this task set (accuracy per slice, kept vs the large "
                        "model)")
    report.add_argument("--plot", type=Path, help="savings: write the cost and escalation "
                        "share over time to this PNG")
    report.add_argument("--bucket", default="1h", help="savings: the plot's and the series' "
                        "time step (an age: 15m, 1h, 1d; default 1h)")
    report.add_argument("--sections", default=",".join(SECTIONS),
                        help=f"which sections, comma-separated (default: {','.join(SECTIONS)})")
    report.add_argument("--json", action="store_true")
    report.set_defaults(handler=run_report)


def _pct(part: int, whole: int) -> str:
    return f"{part}/{whole} ({part / whole:.1%})" if whole else f"{part}/{whole} (-)"


async def collect_governance(settings: Settings, window: Window,
                             args: argparse.Namespace) -> dict[str, Any]:
    from canary.state import FileCanaryStore
    from gateway.governance.history import ServingHistory
    from gateway.governance.numbers import GovernanceTally
    from gateway.records.sinks import RecordQuery, create_sink

    path = settings.governance.history_path
    if path is None or not path.exists():
        return {"error": "no registry history (governance.history_path "
                         f"{'is not set' if path is None else f'{path} does not exist'}): "
                         "start the gateway once with this config"}
    periods = {n: m.reevaluate_days for n, m in settings.models.items()
               if m.reevaluate_days is not None}
    tally = GovernanceTally(ServingHistory(path), periods, settings.governance.reevaluate_days,
                            window)
    tally.tuples()
    try:
        sink = create_sink(settings.records, create=False)
        await sink.open()
    except ConfigError as exc:
        tally.numbers.records_error = str(exc)
    else:
        query = RecordQuery(since=window.since, until=window.until, limit=None,
                            newest_first=False)

        async def bodies() -> AsyncIterator[bytes]:
            async for row in sink.query(query):
                yield row.stored.body

        try:
            await tally.records(bodies())
        finally:
            await sink.aclose()
    if settings.canary.dir.is_dir():
        await tally.drift(FileCanaryStore(settings.canary.dir))
    else:
        tally.numbers.drift_error = (f"no canary store at {settings.canary.dir}: no model was "
                                     "pinned (tiergate canary pin MODEL)")
    return tally.numbers.to_json()


def governance_lines(data: dict[str, Any]) -> list[str]:
    if "error" in data:
        return [f"  not available: {data['error']}"]
    cover = data["coverage"]
    tuples, owners, traffic = cover["tuples"], cover["owners"], cover["traffic"]
    lines = [f"  eval coverage, tuples   {_pct(tuples['current'], tuples['of'])} tuples served "
             "were gated with a current eval"]
    if traffic is None:
        lines.append(f"  eval coverage, traffic  not available: {data['records_error']}")
    else:
        lines.append(f"  eval coverage, traffic  {_pct(traffic['current'], traffic['of'])} "
                     "records answered by a tuple gated and current at the time")
        lines.append(f"                          ({traffic['records']} records in the window: "
                     f"{traffic['of']} answered by a model, {traffic['unanswered']} not; "
                     f"{traffic['unknown_tuple']} by a tuple the history does not know)")
    lines.append(f"  owners                  {_pct(owners['with_owner'], owners['of'])} tuples "
                 "served with an owner")
    by_name = {t["name"]: t for t in data["tuples"]}
    lines.append(f"  stale                   {', '.join(data['stale']) or 'none'}")
    for kind in ("refused", "overridden"):
        named = [f"{n} ({', '.join(by_name[n]['failed_gates'])})"
                 + (f": {by_name[n]['override']}" if kind == "overridden" else "")
                 for n in data[kind]]
        lines.append(f"  {kind:<24}{'; '.join(named) or 'none'}")
    if data["drift_catches"] is None:
        lines.append(f"  drift catches           not available: {data['drift_error']}")
    else:
        catches = data["drift_catches"]
        lines.append(f"  drift catches           {len(catches)} canary alarms raised in the "
                     "window")
        lines.extend(f"    {_when(c['raised_at'])} {c['model']} ({c['source']}): {c['summary']}"
                     for c in catches)
    lines.append(f"  {'tuple':<24}{'status':<12}{'digest':<21}{'owner':<18}{'evaluated':<12}"
                 "stale")
    for t in data["tuples"]:
        evaluated = _when(t["evaluated_at"])[:10] if t["evaluated_at"] is not None else "never"
        lines.append(f"  {t['name']:<24}{t['status']:<12}{t['digest'][:19]:<21}"
                     f"{(t['owner'] or '-')[:17]:<18}{evaluated:<12}"
                     f"{'yes' if t['stale'] else 'no'}")
    return lines


def _when(epoch: float) -> str:
    from gateway.records.sinks.base import format_time

    return format_time(epoch)


SECTIONS: dict[str, Section] = {
    "governance": Section("governance", collect_governance, governance_lines),
    "savings": Section("savings", collect_savings, savings_lines),
}


def run_report(args: argparse.Namespace, settings: Settings) -> int:
    from gateway.governance.numbers import Window
    from gateway.records.sinks.base import parse_time

    try:
        since = parse_time(args.since) if args.since is not None else None
    except ValueError as exc:
        raise ConfigError(f"--since: {exc}") from exc
    window = Window(since, time.time())
    chosen = [name.strip() for name in args.sections.split(",") if name.strip()]
    unknown = [name for name in chosen if name not in SECTIONS]
    if unknown or not chosen:
        raise ConfigError(f"--sections: {', '.join(unknown) or 'none given'}: the sections are "
                          f"{', '.join(SECTIONS)}")

    async def collect() -> dict[str, dict[str, Any]]:
        return {name: await SECTIONS[name].collect(settings, window, args) for name in chosen}

    sections = asyncio.run(collect())
    if args.json:
        body = {"window": {"since": window.since, "until": window.until}, "sections": sections}
        sys.stdout.write(orjson.dumps(body, option=orjson.OPT_INDENT_2).decode() + "\n")
        return 0
    start = _when(window.since) if window.since is not None else "the first record"
    print(f"report window: {start} .. {_when(window.until)}")
    for name in chosen:
        print(f"\n{SECTIONS[name].title}")
        print("\n".join(SECTIONS[name].lines(sections[name])))
    return 0
