"""``tiergate registry list|show``: what the gateways serving this config recorded in the tuple
registry's history (``governance.history_path``): each model's tuple, gate status, owner, eval,
when it was last evaluated and whether that is stale, and which replica served which tuple
when. It reads the history a gateway writes; it loads no model."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import orjson

from gateway.kernel.errors import ConfigError, NotFoundError
from gateway.settings import Settings

DAY_S = 86_400.0


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser],
                 common: argparse.ArgumentParser) -> None:
    registry = sub.add_parser("registry", help="the tuple registry: what serves, its gates, "
                              "owner and evals, and which tuple served when")
    actions = registry.add_subparsers(dest="registry_action", required=True)
    listing = actions.add_parser("list", parents=[common],
                                 help="every configured model as its gateways last served it")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(handler=run_list)
    show = actions.add_parser("show", parents=[common],
                              help="one model (or a tuple digest, as records and headers show "
                                   "it): the whole tuple and its serving history")
    show.add_argument("key", metavar="NAME_OR_DIGEST")
    show.set_defaults(handler=run_show)


def _history(settings: Settings) -> Any:
    from gateway.governance.history import ServingHistory

    path = settings.governance.history_path
    if path is None:
        raise ConfigError("governance.history_path is not set: no registry history is kept")
    if not path.exists():
        raise ConfigError(f"no registry history at {path} yet: start the gateway once "
                          "(tiergate serve) with this config")
    return ServingHistory(path)


def _day(epoch: float | None) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(epoch)) if epoch is not None else "never"


def rows(settings: Settings, now: float | None = None) -> list[dict[str, Any]]:
    """Per configured model: its latest serving and evaluation, as the history has them."""
    now = time.time() if now is None else now
    history = _history(settings)
    out = []
    for name, model in settings.models.items():
        servings = history.servings(name)
        latest = servings[0] if servings else None
        evaluated = history.last_evaluated(latest.digest) if latest is not None else None
        period = model.reevaluate_days or settings.governance.reevaluate_days
        at = evaluated[0] if evaluated is not None else None
        out.append({
            "name": name, "digest": latest.digest if latest else None,
            "status": latest.status if latest else "never served",
            "owner": model.owner, "eval_id": latest.eval_id if latest else None,
            "evaluated_at": at, "evaluated_by": evaluated[1] if evaluated else None,
            "stale": latest is not None and latest.status != "refused"
                     and (at is None or now - at > period * DAY_S),
            "reevaluate_days": period,
            "last_seen": latest.last_seen if latest else None,
            "gates": latest.gates if latest else [], "override": model.gate_override})
    return out


def run_list(args: argparse.Namespace, settings: Settings) -> int:
    found = rows(settings)
    if args.json:
        sys.stdout.write(orjson.dumps(found, option=orjson.OPT_INDENT_2).decode() + "\n")
        return 0
    print(f"{'model':<22}{'status':<12}{'tuple':<21}{'owner':<22}{'evaluated':<19}stale")
    for row in found:
        digest = (row["digest"] or "-")[:19]
        evaluated = f"{_day(row['evaluated_at'])} ({row['evaluated_by'] or '-'})"
        owner = (row["owner"] or "-")[:21]
        print(f"{row['name']:<22}{row['status']:<12}{digest:<21}{owner:<22}{evaluated:<19}"
              f"{'yes' if row['stale'] else 'no'}")
        for gate in row["gates"]:
            if not gate["passed"]:
                print(f"  ✗ {gate['gate']}: {gate['detail']}")
        if row["override"] and row["status"] == "overridden":
            print(f"  override: {row['override']}")
    served = [r for r in found if r["digest"]]
    if served:
        current = sum(r["status"] == "gated" and not r["stale"] for r in served)
        owners = sum(r["owner"] is not None for r in found)
        print(f"\neval coverage: {current}/{len(served)} served tuples gated with a current "
              f"eval; owners set: {owners}/{len(found)}")
    return 0


def run_show(args: argparse.Namespace, settings: Settings) -> int:
    history = _history(settings)
    servings = history.servings(args.key)
    if not servings:
        raise NotFoundError(f"no model or tuple {args.key!r} in the registry history")
    body = {"tuple": history.tuple_of(servings[0].digest),
            "evaluated": history.last_evaluated(servings[0].digest),
            "served": [s.to_json() for s in servings]}
    sys.stdout.write(orjson.dumps(body, option=orjson.OPT_INDENT_2).decode() + "\n")
    return 0
