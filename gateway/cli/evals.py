"""``tiergate eval`` (the shared baseline harness), ``tiergate collect`` (verifier training data
from served models or shadow pairs) and ``tiergate canary ...`` from the command line. Canary
handlers return 0, or 1 when a run found drift (so cron and CI can act on it); errors are one
line on stderr with exit code 2 (the CLI's handler)."""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import sys
import time
from pathlib import Path

import orjson

from gateway.cli.progress import Progress, note
from gateway.kernel.errors import ConfigError
from gateway.settings import Settings

SHADOW_DIR = Path("<shadow.dir>")
"""``--from-shadow`` without a directory: the configured ``shadow.dir``."""


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser],
                 common: argparse.ArgumentParser) -> None:
    evaluate = sub.add_parser(
        "eval", parents=[common],
        help="accuracy per slice, latency, ms/token and memory of a model on a task set")
    evaluate.add_argument("--model", required=True, help="a configured model name")
    evaluate.add_argument("--task-set", required=True, type=Path, help="a JSONL task set")
    evaluate.add_argument("--baseline", help="another model to compare per slice (e.g. the "
                          "full-precision self of an int8 model): accuracy and token agreement")
    evaluate.add_argument("--limit", type=int, help="only the first N items")
    evaluate.add_argument("--concurrency", type=int, default=1)
    evaluate.add_argument("--out", type=Path, help="write the report as JSON here")
    evaluate.set_defaults(handler=run_eval)

    collect = sub.add_parser(
        "collect", parents=[common],
        help="verifier training data (JSONL): a task set answered by the small and large model, "
             "or stored shadow pairs")
    source = collect.add_mutually_exclusive_group(required=True)
    source.add_argument("--task-set", type=Path, help="a JSONL task set")
    source.add_argument("--from-shadow", nargs="?", type=Path, const=SHADOW_DIR,
                        metavar="DIR", help="shadow pairs (default: shadow.dir) of --small "
                        "and --large: the large answer is the reference")
    collect.add_argument("--grader", default='{"type": "exact"}',
                         help="--from-shadow: the grader comparing the small answer with the "
                              "large one, as JSON (e.g. '{\"type\": \"numeric\"}')")
    collect.add_argument("--since", help="--from-shadow: only pairs from this time (ISO 8601 "
                         "or epoch seconds)")
    collect.add_argument("--out", required=True, type=Path, help="training JSONL to write")
    collect.add_argument("--route", help="take --small / --large from this configured route")
    collect.add_argument("--small", help="the small model (a configured model name)")
    collect.add_argument("--large", help="the large model (optional: without it the rows carry "
                         "no large answer and train only 'small-wrong' verifiers)")
    collect.add_argument("--limit", type=int, help="only the first N items")
    collect.add_argument("--concurrency", type=int, default=1)
    collect.add_argument("--top-logprobs", type=int, default=0,
                         help="top logprobs kept per token (0: the sampled token's only, what a "
                              "cascade route reads when the client asks for none)")
    collect.set_defaults(handler=run_collect)

    from gateway.cli.canary import add_canary_commands

    add_canary_commands(sub, common)


def run_eval(args: argparse.Namespace, settings: Settings) -> int:
    from gateway.evals.harness import (
        EvalReport,
        agreement,
        format_report,
        run_taskset,
        summarize,
    )
    from gateway.evals.tasksets import load_taskset
    from gateway.kernel.digests import file_sha256
    from gateway.models.registry import ModelRegistry

    items = load_taskset(args.task_set)[: args.limit]
    taskset_sha = file_sha256(args.task_set)

    async def evaluate() -> tuple[EvalReport, EvalReport | None]:
        registry = ModelRegistry(settings)
        names = [args.model] + ([args.baseline] if args.baseline else [])
        try:
            note(f"loading {', '.join(names)} ...")
            await registry.start(names)
            reports = []
            for name in names:
                backend = registry.get(name)
                started = time.perf_counter()
                progress = Progress(f"{name}: {len(items)} items of {args.task_set}", len(items))
                runs = await run_taskset(backend, items, args.concurrency, progress=progress)
                progress.done()
                model = backend.describe()
                report = summarize(name, model.digest(), str(args.task_set), taskset_sha, runs,
                                   time.perf_counter() - started, model.model_dump(mode="json"))
                reports.append((report, runs))
            if len(reports) == 2:
                reports[0][0].agreement = agreement(reports[0][1], reports[1][1])
                return reports[0][0], reports[1][0]
            return reports[0][0], None
        finally:
            await registry.aclose()

    report, baseline = asyncio.run(evaluate())
    print(format_report(report, baseline))
    if args.out is None:
        print("\nto validate this tuple with it, run again with --out FILE and pin the file in "
              "the model's settings (docs/governance.md)")
        return 0
    payload = {"report": report.to_json(), "baseline": baseline.to_json() if baseline else None}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    data = orjson.dumps(payload, option=orjson.OPT_INDENT_2)
    args.out.write_bytes(data)
    print(f"\npin it in [models.{args.model}]: eval = \"{args.out}\"\n"
          f"    eval_sha256 = \"{hashlib.sha256(data).hexdigest()}\"")
    return 0


def _tiers(args: argparse.Namespace, settings: Settings) -> tuple[str, str | None]:
    small, large = args.small, args.large
    if args.route is not None:
        route = settings.routes.get(args.route)
        if route is None:
            known = ", ".join(settings.routes) or "none configured"
            raise ConfigError(f"--route: no route {args.route!r} (routes: {known})")
        small, large = small or route.small, large or route.large
    if small is None:
        raise ConfigError("collect needs --small MODEL (or --route NAME)")
    for flag, name in (("--small", small), ("--large", large)):
        if name is not None and name not in settings.models:
            hint = " (a route: use --route)" if name in settings.routes else ""
            raise ConfigError(f"{flag}: no model {name!r} in the configuration{hint}")
    return small, large


def run_collect_shadow(args: argparse.Namespace, settings: Settings, small: str,
                       large: str | None) -> int:
    from pydantic import ValidationError

    from canary.shadow import ShadowLog
    from gateway.evals.graders import get_grader
    from gateway.records.sinks.base import parse_time
    from gateway.verifier_data import format_summary, shadow_rows
    from verifiers.data import write_examples

    if large is None:
        raise ConfigError("--from-shadow needs --large MODEL (or --route NAME): the large "
                          "answer is the reference")
    directory = settings.shadow.dir if args.from_shadow is SHADOW_DIR else args.from_shadow
    try:
        grader = get_grader(orjson.loads(args.grader))
        since = None if args.since is None else parse_time(args.since)
    except (orjson.JSONDecodeError, ValidationError, ValueError, TypeError, AttributeError) as exc:
        raise ConfigError(f"--grader / --since: {str(exc).splitlines()[0]}") from exc
    rows = shadow_rows(ShadowLog(directory).read(since), small, large, grader)
    if not rows:
        raise ConfigError(f"no shadow pairs of {small} and {large} in {directory}")
    write_examples(args.out, rows)
    print(f"{len(rows)} rows from shadow pairs in {directory} (small {small}, large {large}, "
          f"reference: the large answer) -> {args.out}")
    print(format_summary(rows))
    return 0


def run_collect(args: argparse.Namespace, settings: Settings) -> int:
    from gateway.evals.tasksets import load_taskset
    from gateway.models.registry import ModelRegistry
    from gateway.verifier_data import Collected, collect_taskset, format_summary
    from verifiers.data import write_examples

    small, large = _tiers(args, settings)
    if args.from_shadow is not None:
        return run_collect_shadow(args, settings, small, large)
    if args.limit is not None and args.limit < 1:
        raise ConfigError("--limit must be at least 1")
    if args.concurrency < 1 or args.top_logprobs < 0:
        raise ConfigError("--concurrency must be at least 1 and --top-logprobs at least 0")
    items = load_taskset(args.task_set)[: args.limit]

    async def collect() -> Collected:
        registry = ModelRegistry(settings)
        try:
            names = [small] + ([large] if large else [])
            note(f"loading {', '.join(names)} ...")
            await registry.start(names)
            progress = Progress(f"answering {len(items)} items of {args.task_set} on "
                                f"{' and '.join(names)}", len(items))
            collected = await collect_taskset(
                items, registry.get(small), registry.get(large) if large else None,
                args.concurrency, args.top_logprobs, progress)
            progress.done()
            return collected
        finally:
            await registry.aclose()

    started = time.perf_counter()
    collected = asyncio.run(collect())
    if not collected.rows:
        raise ConfigError(f"no rows: every item failed ({collected.failed[0]})")
    write_examples(args.out, collected.rows)
    print(f"{len(collected.rows)} rows from {args.task_set} (small {small}, large "
          f"{large or '-'}) in {time.perf_counter() - started:.1f} s -> {args.out}")
    print(format_summary(collected.rows))
    if collected.failed:
        print(f"{len(collected.failed)} items failed (no row): {collected.failed[0]}",
              file=sys.stderr)
    return 0
