"""``tiergate eval`` (the shared baseline harness) and ``tiergate canary ...`` from the command
line. Canary handlers return 0, or 1 when a run found drift (so cron and CI can act on it);
errors are one line on stderr with exit code 2 (the CLI's handler)."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

import orjson

from gateway.settings import Settings


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

    from canary.cli import add_canary_commands

    add_canary_commands(sub, common)


def run_eval(args: argparse.Namespace, settings: Settings) -> int:
    from canary.harness import EvalReport, agreement, format_report, run_taskset, summarize
    from canary.tasksets import load_taskset
    from gateway.digests import file_sha256
    from gateway.registry import ModelRegistry

    items = load_taskset(args.task_set)[: args.limit]
    taskset_sha = file_sha256(args.task_set)

    def progress(done: int, total: int) -> None:
        if sys.stderr.isatty():
            print(f"\r{done}/{total}", end="", file=sys.stderr, flush=True)

    async def evaluate() -> tuple[EvalReport, EvalReport | None]:
        registry = ModelRegistry(settings)
        names = [args.model] + ([args.baseline] if args.baseline else [])
        try:
            await registry.start(names)
            reports = []
            for name in names:
                backend = registry.get(name)
                started = time.perf_counter()
                runs = await run_taskset(backend, items, args.concurrency, progress=progress)
                report = summarize(name, backend.describe().digest(), str(args.task_set),
                                   taskset_sha, runs, time.perf_counter() - started)
                reports.append((report, runs))
            if len(reports) == 2:
                reports[0][0].agreement = agreement(reports[0][1], reports[1][1])
                return reports[0][0], reports[1][0]
            return reports[0][0], None
        finally:
            await registry.aclose()

    report, baseline = asyncio.run(evaluate())
    if sys.stderr.isatty():
        print(file=sys.stderr)
    print(format_report(report, baseline))
    slices = ", ".join(f'"{k}" = {v.accuracy:.4f}' for k, v in report.slices.items())
    print(f"\npin it: validating_eval = {{ id = \"{report.id}\", "
          f"score = {report.overall.accuracy:.4f}, slices = {{ {slices} }} }}")
    if args.out is not None:
        payload = {"report": report.to_json(),
                   "baseline": baseline.to_json() if baseline else None}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_bytes(orjson.dumps(payload, option=orjson.OPT_INDENT_2))
    return 0
