"""The ``tiergate`` command. Each subcommand loads the same settings (``--config`` file and
``TIERGATE_*`` environment variables)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway import __version__
from gateway.cli.progress import note
from gateway.kernel.errors import ConfigError, TiergateError
from gateway.settings import Settings, load_settings

Command = Callable[[argparse.Namespace, Settings], int]
DEFAULT_CONFIG = Path("deploy/local/tiergate.toml")
"""Read when neither ``--config`` nor ``TIERGATE_CONFIG`` names a file and the working
directory has it (a checkout): what ``make serve`` serves, so the guides' commands work as
written there. Commands that read settings say so on stderr (``reads_settings``: the others,
``keys``, ``verifier``, ``thresholds``, set it false)."""


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    from pydantic import ValidationError

    from gateway.http.server import serve
    from gateway.settings import ServerSettings

    given = {k: v for k, v in (("host", args.host), ("port", args.port),
                               ("workers", args.workers)) if v is not None}
    try:  # validated like the file's values (a port out of range is refused, not wrapped)
        server = ServerSettings.model_validate({**settings.server.model_dump(), **given})
    except ValidationError as exc:
        raise ConfigError(f"invalid serve options: {exc}") from exc
    serve(settings.model_copy(update={"server": server}))
    return 0


def _models(args: argparse.Namespace, settings: Settings) -> int:
    """The gateway's ``/v1/models``: its routes, then every model's tuple as served — each
    backend started exactly as the gateway starts it (weights digest checked, quantized,
    upstream asked), since a tuple's digest covers what only the load knows (the quantized
    layers, a GGUF's file type, an upstream's identity). ``--pinned`` skips the loading and
    shows what the settings pin, without digests."""
    from gateway.models.registry import ModelRegistry
    from router.loading import build_router, route_cards

    async def describe() -> list[dict[str, Any]]:
        registry = ModelRegistry(settings)
        router = build_router(settings.routes, None) if settings.routes else None
        if not args.pinned and registry.backends:
            note(f"loading {len(registry.backends)} models as the gateway does (--pinned: "
                 "what the settings pin, at once) ...")
            await registry.start()
            await _gate(registry)
        try:
            routes = [] if router is None else route_cards(router, registry.created)
            return routes + registry.cards()
        finally:
            await registry.aclose()

    cards = asyncio.run(describe())
    if args.pinned:
        for card in cards:
            if card["tiergate"]["kind"] == "model":
                card["tiergate"]["digest"] = None
    if args.json:
        import orjson

        sys.stdout.write(orjson.dumps(cards, option=orjson.OPT_INDENT_2).decode() + "\n")
        return 0
    if not cards:
        print("no models configured")
    for card in cards:
        print(_route_text(card) if card["tiergate"]["kind"] == "route" else _model_text(card))
    return 0


async def _gate(registry: Any) -> None:
    """The gates as the gateway runs them (their verdicts logged, the validating evals in the
    tuples), without writing the registry's history."""
    from gateway.governance.registry import TupleRegistry
    from gateway.telemetry.instruments import Telemetry

    settings = registry.settings
    quiet = settings.model_copy(update={"governance": settings.governance.model_copy(
        update={"history_path": None}), "canary": settings.canary.model_copy(
        update={"alert_sinks": []})})
    telemetry = Telemetry(settings.telemetry.model_copy(update={"tracing": False}))
    tuples = TupleRegistry(quiet, registry, telemetry)
    for name in registry.backends:
        await tuples.admit(name)


def _route_text(card: dict[str, Any]) -> str:
    t = card["tiergate"]
    verifier = (f"{t['verifier_id']} (sha256 {t['verifier_sha256']})" if t["verifier_id"]
                else "-")
    return (f"{card['id']}  (route, {t['mode']})\n  small         {t['small']}\n"
            f"  large         {t['large']}\n  verifier      {verifier}\n"
            f"  threshold     {t['threshold'] if t['threshold'] is not None else '-'}"
            " (configured; live: GET /admin/routes/NAME/threshold)")


def _model_text(card: dict[str, Any]) -> str:
    t = card["tiergate"]
    adapter = t["adapter"]["id"] if t["adapter"] else "-"
    digest = t["digest"] or "- (known once loaded: run without --pinned)"
    return (f"{card['id']}\n  engine        {t['engine']} {t['engine_version'] or ''}\n"
            f"  upstream      {t['upstream_model'] or '-'} @ {t['source'] or '-'}\n"
            f"  weights       {t['base_weights_sha256'] or '(not pinned)'}\n"
            f"  quantization  {t['quantization']['method']}\n  adapter       {adapter}\n"
            f"  eval          {_eval_text(t['validating_eval'])}\n"
            f"  tuple digest  {digest}")


def _eval_text(evaluation: dict[str, Any] | None) -> str:
    return f"{evaluation['id']} score={evaluation['score']}" if evaluation else "-"


def _prepare(args: argparse.Namespace, settings: Settings) -> int:
    import logging

    from gateway.backends.engine.packaged import CATALOGUE, prepare, source_record
    from gateway.backends.settings import EngineModelSettings

    logging.basicConfig(level=logging.INFO,  # each conversion step as it starts
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    names = args.names or [m.packaged for m in settings.models.values()
                           if isinstance(m, EngineModelSettings) and m.packaged]
    if not names:
        print("packaged models:", ", ".join(CATALOGUE), "(none configured)")
        return 0
    for name in dict.fromkeys(names):
        path = prepare(name, settings.models_dir, force=args.force)
        record = source_record(path) or {}
        print(f"{name}: {path}  weights sha256 {record.get('weights_sha256')}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tiergate", description=__doc__)
    parser.add_argument("--version", action="version", version=f"tiergate {__version__}")
    parser.add_argument("--config", type=Path, help="settings file (TOML or YAML)")
    # --config is accepted before or after the subcommand's name.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", type=Path, default=argparse.SUPPRESS,
                        help="settings file (TOML or YAML)")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the gateway", parents=[common])
    serve.add_argument("--host", help="interface to listen on (default: server.host, 127.0.0.1)")
    serve.add_argument("--port", type=int,
                       help="TCP port, 0-65535 (default: server.port, 8000; 0: any free port)")
    serve.add_argument("--workers", type=int,
                       help="worker processes sharing the port (default: server.workers, 1)")
    serve.set_defaults(handler=_serve)

    models = sub.add_parser("models", parents=[common],
                            help="the routes and model tuples the gateway serves (GET /v1/models)")
    models.add_argument("--pinned", action="store_true",
                        help="what the settings pin, without loading the models (no digests)")
    models.add_argument("--json", action="store_true")
    models.set_defaults(handler=_models)

    prepare = sub.add_parser("prepare", parents=[common],
                             help="convert packaged models (default: the configured ones) once")
    prepare.add_argument("names", nargs="*", metavar="NAME")
    prepare.add_argument("--force", action="store_true", help="convert again")
    prepare.set_defaults(handler=_prepare)

    from gateway.cli.evals import add_commands as add_canary_commands

    add_canary_commands(sub, common)

    from verifiers.commands import add_commands as add_verifier_commands

    add_verifier_commands(sub, common)

    from gateway.cli.thresholds import add_commands as add_router_commands

    add_router_commands(sub, common)

    from gateway.cli.records import add_commands as add_records_commands

    add_records_commands(sub, common)

    from gateway.cli.registry import add_commands as add_registry_commands

    add_registry_commands(sub, common)

    from gateway.cli.report import add_commands as add_report_commands

    add_report_commands(sub, common)

    from gateway.cli.keys import add_commands as add_key_commands

    add_key_commands(sub, common)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = load_settings(args.config, default=DEFAULT_CONFIG)
        if (args.config is None and settings.config_file == DEFAULT_CONFIG
                and getattr(args, "reads_settings", True)):
            note(f"tiergate: settings from {DEFAULT_CONFIG} (no --config, no TIERGATE_CONFIG)")
        handler: Command = args.handler
        return handler(args, settings)
    except (ConfigError, TiergateError) as exc:
        print(f"tiergate: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `tiergate records list | head`: the reader left, not an error
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
