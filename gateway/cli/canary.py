"""``tiergate canary pin|run|status|ack|unpin``: pinned versions and drift from the shell.

Each handler builds a :class:`~canary.service.CanaryService` on the configured store
(``canary.dir``); ``pin`` and ``run`` start only the backends they need, through the same
:class:`~gateway.models.registry.ModelRegistry` the gateway uses. ``pin`` first runs the gates
as serving does (:mod:`gateway.governance.pinning`): a tuple that fails them is not pinned (one
line naming the gates, exit 2) unless the model has a ``gate_override`` or
``governance.ungated = "warn"``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import orjson

from gateway.cli.progress import note
from gateway.settings import Settings

T = TypeVar("T")


def add_canary_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser],
                        common: argparse.ArgumentParser) -> None:
    canary = sub.add_parser("canary", parents=[common],
                            help="pin model versions, run canaries, detect drift, roll back")
    actions = canary.add_subparsers(dest="canary_command", required=True)

    pin = actions.add_parser("pin", parents=[common],
                             help="freeze a model version: its tuple and golden outputs")
    pin.add_argument("model", help="a configured model")
    pin.add_argument("--set", type=Path, dest="set_path",
                     help="the canary set (default: canary.models.MODEL.canary_set, "
                          "canary.default_set, or the shipped reference set)")
    pin.add_argument("--json", action="store_true")
    pin.set_defaults(handler=run_pin)

    run = actions.add_parser("run", parents=[common],
                             help="run the canary set against the live backends; exit 1 on "
                                  "drift")
    run.add_argument("models", nargs="*", metavar="MODEL", help="default: every pinned model")
    run.add_argument("--json", action="store_true")
    run.set_defaults(handler=run_run)

    status = actions.add_parser("status", parents=[common],
                                help="pinned tuple, last run per slice, drift state and alarm")
    status.add_argument("models", nargs="*", metavar="MODEL", help="default: every pinned model")
    status.add_argument("--json", action="store_true")
    status.set_defaults(handler=run_status)

    ack = actions.add_parser("ack", parents=[common],
                             help="acknowledge a drift alarm: rollback ends, evidence restarts")
    ack.add_argument("model")
    ack.add_argument("--by", help="who acknowledges (kept with the alarm)")
    ack.set_defaults(handler=run_ack)

    unpin = actions.add_parser("unpin", parents=[common],
                               help="drop a model's pin and drift state (history is kept)")
    unpin.add_argument("model")
    unpin.set_defaults(handler=run_unpin)


def _print_json(payload: Any) -> None:
    sys.stdout.write(orjson.dumps(payload, option=orjson.OPT_INDENT_2).decode() + "\n")


async def _with_backends(settings: Settings, names: list[str],
                         work: Callable[[Any], Awaitable[T]]) -> T:
    from gateway.models.registry import ModelRegistry

    registry = ModelRegistry(settings)
    try:
        await registry.start(names)
        return await work(registry)
    finally:
        await registry.aclose()


def run_pin(args: argparse.Namespace, settings: Settings) -> int:
    from canary.pins import Pin
    from canary.service import CanaryService
    from canary.sets import load_canary_set
    from gateway.governance.pinning import check_pin

    service = CanaryService(settings)
    service.require_configured(args.model)  # fail before loading any model
    set_path = args.set_path or service.set_path(args.model)
    items = len(load_canary_set(set_path).items)
    note(f"pinning {args.model}: loading it, then decoding the {items} items of {set_path} ...")

    async def pin(registry: Any) -> Pin:
        check_pin(settings, registry, args.model)  # refused: one line, exit 2 (main)
        return await service.pin(args.model, registry.get(args.model), args.set_path)

    teacher = settings.models[args.model].teacher  # the distilled gate compares with it
    names = [args.model] + ([teacher] if teacher in settings.models else [])
    result = asyncio.run(_with_backends(settings, names, pin))
    if args.json:
        _print_json(result.model_dump(mode="json"))
        return 0
    print(f"pinned {result.model} v{result.version}: tuple {result.tuple_digest}")
    print(f"  set {result.set_path} (sha256 {result.set_sha256[:12]}), {len(result.golden)} "
          f"items, golden pass rate {result.pass_rate:.1%}")
    for name, (passed, items) in result.slice_pass_counts().items():
        print(f"  {name:<20}{passed:>4}/{items:<4}{passed / items:>7.1%}")
    return 0


def run_run(args: argparse.Namespace, settings: Settings) -> int:
    from canary.report import run_report
    from canary.runs import CanaryRun
    from canary.service import CanaryService

    service = CanaryService(settings)

    async def choose() -> list[str]:
        if args.models:
            return list(args.models)
        return service.scheduled_models(await service.store.models())

    models = asyncio.run(choose())
    if not models:
        print("no pinned models (tiergate canary pin MODEL)")
        return 0
    for model in models:  # fail before starting anything
        service.require_configured(model)
    note(f"canary run of {', '.join(models)}: loading, then sending the pinned sets ...")

    async def run_all(registry: Any) -> list[CanaryRun]:
        return [await service.run(model, registry.get(model)) for model in models]

    runs = asyncio.run(_with_backends(settings, models, run_all))
    if args.json:
        _print_json([run.model_dump(mode="json") for run in runs])
    else:
        print("\n\n".join(run_report(run) for run in runs))
    return 1 if any(run.status == "drift" for run in runs) else 0


def run_status(args: argparse.Namespace, settings: Settings) -> int:
    from canary.report import status_report
    from canary.service import CanaryService, ModelStatus

    service = CanaryService(settings)

    async def collect() -> list[ModelStatus]:
        if args.models:
            return [await service.status(model) for model in args.models]
        return await service.statuses()

    statuses = asyncio.run(collect())
    if args.json:
        _print_json([status.to_json() for status in statuses])
    elif not statuses:
        print(f"no pinned models in {settings.canary.dir} (tiergate canary pin MODEL)")
    else:
        print("\n\n".join(status_report(status) for status in statuses))
    return 0


async def _end_rollback(settings: Settings, model: str) -> None:
    """Gateways sharing Redis end the model's rollback at once (without Redis they re-read the
    store every ``canary.refresh_s``)."""
    from canary.monitor import publish_rollback

    await publish_rollback(settings, model, None)


def run_ack(args: argparse.Namespace, settings: Settings) -> int:
    from canary.report import when
    from canary.service import CanaryService

    async def ack() -> Any:
        closed = await CanaryService(settings).ack(args.model, args.by)
        await _end_rollback(settings, args.model)
        return closed

    closed = asyncio.run(ack())
    if closed is None:
        print(f"{args.model}: no standing alarm; drift evidence restarted")
    else:
        print(f"{args.model}: alarm of {when(closed.raised_at)} acknowledged; rollback ended, "
              "drift evidence restarted")
    return 0


def run_unpin(args: argparse.Namespace, settings: Settings) -> int:
    from canary.service import CanaryService

    async def unpin() -> None:
        await CanaryService(settings).unpin(args.model)
        await _end_rollback(settings, args.model)

    asyncio.run(unpin())
    print(f"{args.model}: unpinned (older pins and run history stay in {settings.canary.dir})")
    return 0
