"""Building the router from settings: verifier artifacts loaded (sha256-checked) once."""

from __future__ import annotations

import logging
from typing import Any

from gateway.kernel.errors import ConfigError
from gateway.protocol import model_card
from router.policy import Route, Router
from router.settings import RouteSettings
from router.strategies import ROUTING_MODES, get_strategy
from router.thresholds import ThresholdStore

log = logging.getLogger("tiergate.router")


def build_router(routes: dict[str, RouteSettings], redis_url: str | None) -> Router:
    """The routes of the settings, each with its verifier loaded and of the kind its mode needs,
    and their thresholds (shared through Redis at ``redis_url``, if any)."""
    built: dict[str, Route] = {}
    ranges: dict[str, tuple[float, float]] = {}
    for name, settings in routes.items():
        verifier = None
        wanted = ROUTING_MODES[settings.mode].verifier_kind
        if settings.verifier is not None and wanted is None:
            raise ConfigError(f"routes.{name}: a {settings.mode} route uses no verifier; "
                              f"remove 'verifier' = {str(settings.verifier)!r}")
        if settings.verifier is not None:
            from verifiers.artifact import load_artifact
            from verifiers.errors import VerifierError

            try:
                verifier = load_artifact(settings.verifier)
            except VerifierError as exc:
                raise ConfigError(f"routes.{name}.verifier: {exc}") from exc
            pinned = settings.verifier_sha256
            if pinned is None:
                log.warning("routes.%s: verifier %s (sha256 %s) is not pinned "
                            "(allow_unpinned_verifier): set verifier_sha256 to pin it",
                            name, settings.verifier, verifier.sha256)
            elif verifier.sha256 != pinned:
                raise ConfigError(f"routes.{name}.verifier: {settings.verifier} holds verifier "
                                  f"{verifier.id} (sha256 {verifier.sha256}), not the pinned "
                                  f"verifier_sha256 {pinned}")
            if verifier.kind != wanted:
                raise ConfigError(f"routes.{name}: a {settings.mode} route needs a {wanted} "
                                  f"verifier; {settings.verifier} is a {verifier.kind} verifier")
            low, high = verifier.manifest.get("score", {}).get("range", (0.0, 1.0))
            ranges[name] = (float(low), float(high))
        built[name] = Route(name, settings.mode, settings.small, settings.large, settings.tier,
                            verifier)
    thresholds = ThresholdStore({n: r.threshold for n, r in routes.items()}, redis_url,
                                ranges=ranges)
    for name, value in thresholds.values.items():
        thresholds.validate(name, value)
    return Router(built, thresholds)


def route_cards(router: Router, created: int) -> list[dict[str, Any]]:
    """The routes as ``/v1/models`` entries (``tiergate.kind = "route"``): what the gateway
    lists and ``tiergate models`` prints."""
    cards = []
    for name, route in router.routes.items():
        info = {"kind": "route", "mode": route.mode, "small": route.small,
                "large": route.large, "threshold": router.thresholds.get(name),
                "verifier_id": route.verifier.id if route.verifier else None,
                "verifier_sha256": route.verifier.sha256 if route.verifier else None}
        info.update(get_strategy(route.mode).describe(route))
        cards.append(model_card(name, created, info))
    return cards
