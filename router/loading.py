"""Building the router from settings: verifier artifacts loaded (sha256-checked) once."""

from __future__ import annotations

import logging

from gateway.kernel.errors import ConfigError
from router.policy import Route, Router
from router.settings import RouteSettings
from router.strategies import ROUTING_MODES
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
