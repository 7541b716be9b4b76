"""The ``savings`` section of ``tiergate report``: per route, what it cost against always-large
and always-small, and the quality it keeps (:mod:`gateway.governance.savings` counts it); the
figures over time as a PNG (``--plot``)."""

from __future__ import annotations

import argparse
import itertools
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.kernel.errors import ConfigError, TiergateError
from gateway.settings import Settings

if TYPE_CHECKING:
    from gateway.governance.numbers import Window


def bucket_seconds(text: str) -> float:
    """``--bucket``: an age (``15m``, ``1h``, ``1d``) as seconds."""
    from gateway.records.sinks.base import parse_time

    if not text or text[-1] not in "smhdw":
        raise ConfigError(f"--bucket: not an age: {text!r} (15m, 1h, 1d)")
    try:
        seconds = parse_time(text, now=0.0) * -1
    except ValueError as exc:
        raise ConfigError(f"--bucket: {exc}") from exc
    if seconds <= 0:
        raise ConfigError(f"--bucket: not an age: {text!r} (15m, 1h, 1d)")
    return seconds


async def collect_savings(settings: Settings, window: Window,
                          args: argparse.Namespace) -> dict[str, Any]:
    from gateway.evals.tasksets import load_taskset
    from gateway.governance.savings import collect_savings as collect
    from gateway.records.sinks import create_sink

    items = load_taskset(args.task_set) if getattr(args, "task_set", None) else []
    bucket = bucket_seconds(getattr(args, "bucket", "1h"))
    try:
        sink = create_sink(settings.records, create=False)
        await sink.open()
    except TiergateError as exc:  # no store (yet), or one that cannot be read
        return {"error": exc.message}
    try:
        data = await collect(settings, sink, window.since, window.until,
                             getattr(args, "route", None), bucket, items)
    except TiergateError as exc:
        return {"error": exc.message}
    finally:
        await sink.aclose()
    plot = getattr(args, "plot", None)
    if plot is not None:
        data["plot"] = str(plot_savings(data, plot))
    return data


def _usd(value: float | None) -> str:
    return "n/a" if value is None else f"${value:,.6f}"


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def savings_lines(data: dict[str, Any]) -> list[str]:
    if "error" in data:
        return [f"  not available: {data['error']}"]
    totals = data["totals"]
    lines = [f"  {totals['requests']} requests, {totals['calls']} model calls, actual cost "
             f"{_usd(totals['actual_usd'])} (the sum of the records' calls[].cost.usd)"]
    if not data["routes"]:
        lines.append("  no records in the window")
    for name, route in data["routes"].items():
        tiers = f" ({route['mode']}: {route['small']} -> {route['large']})" if "mode" in route \
            else ""
        lines.append(f"  route {name}{tiers}")
        escalated = (f", escalated {route['escalated']}/{route['decided']} "
                     f"({_share(route['escalation_share'])})" if route["decided"] else "")
        tokens = route["tokens"]
        lines.append(f"    requests {route['requests']}{escalated}; tokens in "
                     f"{tokens['prompt']} ({tokens['cached']} cached), out {tokens['completion']}")
        lines.append(f"    actual        {_usd(route['actual_usd'])}")
        if "mode" in route:
            vs = route["cost_vs_large"]
            lines.append(f"    always-large  {_usd(route['always_large_usd'])}"
                         + (f"   actual is {vs:.1%} of it, saved {_usd(route['saved_usd'])}"
                            if vs is not None else ""))
            lines.append(f"    always-small  {_usd(route['always_small_usd'])}")
        notes = []
        if route["unpriced_calls"]:
            notes.append(f"{route['unpriced_calls']} calls unpriced (no cost section, or "
                         "recorded before costs)")
        if route["estimated_calls"]:
            notes.append(f"{route['estimated_calls']} calls with usage counted by the gateway "
                         "(streams cut short)")
        if notes:
            lines.append(f"    ({'; '.join(notes)})")
        lines.extend(_quality_lines(route["quality"]))
    if data.get("canary_error"):
        lines.append(f"  canary: {data['canary_error']}")
    if data.get("shadow_error"):
        lines.append(f"  shadow: {data['shadow_error']}")
    if data.get("plot"):
        lines.append(f"  plot: {data['plot']}")
    return lines


def _quality_lines(quality: dict[str, Any]) -> list[str]:
    lines = []
    canary = quality["canary"]
    if canary is not None:
        for tier in ("small", "large"):
            run = canary[tier]
            if run is None:
                continue
            slices = ", ".join(f"{name} {rate:.0%}" for name, rate in run["slices"].items())
            lines.append(f"    canary ({tier}, {_when(run['started_at'])}): pass rate "
                         f"{_share(run['pass_rate'])} on {run['items']} items (at pin "
                         f"{_share(run['golden_pass_rate'])}); {slices}")
    shadow = quality["shadow"]
    if shadow is not None:
        kept = "" if shadow["kept"] is None else \
            f"; kept (answers as always-large would give them) {_share(shadow['kept'])}"
        lines.append(f"    shadow: {shadow['agreeing']}/{shadow['mirrored']} small answers "
                     f"agree with the large model ({_share(shadow['agreement'])}){kept}")
    graded = quality["graded"]
    if graded is not None:
        total = graded["ALL"]
        kept = "" if total["kept"] is None else \
            (f", large {_share(total['large_accuracy'])} on {total['compared']} of them: "
             f"kept accuracy {_share(total['kept'])}")
        lines.append(f"    graded: accuracy {_share(total['accuracy'])} on {total['items']} "
                     f"task items{kept}")
        lines.append(f"      {'slice':<14}{'items':>6}{'route':>9}{'large':>9}{'kept':>9}")
        for name, figures in graded.items():
            lines.append(f"      {name:<14}{figures['items']:>6}"
                         f"{_share(figures['accuracy']):>9}"
                         f"{_share(figures['large_accuracy']):>9}{_share(figures['kept']):>9}")
    return lines


def _when(epoch: float) -> str:
    from gateway.records.sinks.base import format_time

    return format_time(epoch)[:16]


def plot_savings(data: dict[str, Any], path: Path) -> Path:
    """Per route, over time: the cost so far, actual against always-large and always-small
    (top), and each time step's escalation share (bottom)."""
    from datetime import UTC, datetime, timedelta

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    step = data["bucket_s"]
    figure, (cost, share) = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    try:
        for name in data["routes"]:
            points = [p for p in data["series"] if p["route"] == name]
            when = [datetime.fromtimestamp(p["start"] + step, UTC) for p in points]
            line, = cost.plot(when, _so_far(p["actual_usd"] for p in points), "o-",
                              label=f"{name}: actual")
            for key, style in (("always_large_usd", "s--"), ("always_small_usd", "^:")):
                values = [p[key] for p in points]
                if all(v is not None for v in values):
                    cost.plot(when, _so_far(values), style, color=line.get_color(),
                              label=f"{name}: {key.removesuffix('_usd').replace('_', '-')}")
            shares = [p["escalation_share"] for p in points]
            if any(s is not None for s in shares):
                share.plot(when, [float("nan") if s is None else 100 * s for s in shares], "o-",
                           color=line.get_color(), label=name)
        cost.set_ylabel("USD so far")
        cost.set_title("what routing cost so far, against always-large and always-small")
        cost.grid(alpha=0.3)
        cost.legend(fontsize=8)
        share.set_ylabel(f"requests escalated per {_step(step)} (%)")
        share.set_xlabel("end of each time step (UTC)")
        share.grid(alpha=0.3)
        if data["series"]:
            first = min(p["start"] for p in data["series"])
            last = max(p["start"] for p in data["series"]) + step
            pad = timedelta(seconds=step / 2)
            share.set_xlim(datetime.fromtimestamp(first, UTC) + pad,
                           datetime.fromtimestamp(last, UTC) + pad)
        locator = mdates.AutoDateLocator()  # type: ignore[no-untyped-call]
        share.xaxis.set_major_locator(locator)
        share.xaxis.set_major_formatter(
            mdates.ConciseDateFormatter(locator))  # type: ignore[no-untyped-call]
        figure.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, dpi=110)
    finally:
        plt.close(figure)
    return path


def _so_far(values: Iterable[float]) -> list[float]:
    return list(itertools.accumulate(values))


def _step(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"
