"""What a running gateway holds: the composition root. Built by the app factory (the front door
keeps it as ``app.gateway``), started and stopped by the ASGI lifespan.

A server's start returns once the services run and the models' loading has begun in the
background (:meth:`ModelRegistry.load`): the port is bound at once, ``/readyz`` answers 503 with
the reasons until every model that is not ``deferred`` is loaded. A start that fails stops what
it had started (the records spool and its delivery process included).

Building it registers every credential of the settings with :mod:`gateway.kernel.secrets`
(secret fields, the passwords of URLs), and starting it puts the redacting filter on the log
handlers: what the gateway writes or answers never carries them."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import Any

from canary.escalation import EscalationDrift, build_escalation_drift
from canary.mirror import ShadowMirror
from canary.monitor import CanaryMonitor
from gateway.governance.events import EventLog, open_event_log
from gateway.governance.registry import TupleRegistry
from gateway.http.openapi import openapi_document
from gateway.kernel import secrets
from gateway.kernel.errors import ServiceUnavailableError
from gateway.keys.gate import KeyGate
from gateway.keys.limiter import Limiter, LocalLimiter, RedisLimiter
from gateway.keys.store import open_store
from gateway.models.registry import ModelRegistry, check_sources, usable
from gateway.records.recorder import Recorder
from gateway.serving import OpenAIServing
from gateway.serving.curves import RouteCurves
from gateway.settings import Settings
from gateway.telemetry.instruments import CIRCUIT_VALUES, Telemetry
from router.loading import build_router, route_cards
from router.policy import Router

log = logging.getLogger("tiergate.app")


@dataclass(slots=True)
class GatewayState:
    settings: Settings
    registry: ModelRegistry
    serving: OpenAIServing
    keys: KeyGate
    openapi: dict[str, Any]
    telemetry: Telemetry
    canaries: CanaryMonitor
    tuples: TupleRegistry
    curves: RouteCurves
    events: EventLog
    recorder: Recorder | None = None
    router: Router | None = None
    shadow: ShadowMirror | None = None
    loading: asyncio.Task[None] | None = None
    escalation_drift: EscalationDrift | None = None

    @classmethod
    def build(cls, settings: Settings) -> GatewayState:
        secrets.register_settings(settings)
        check_sources(settings)
        registry = ModelRegistry(settings)
        telemetry = Telemetry(settings.telemetry, names=[*settings.models, *settings.routes])
        telemetry.gauge("tiergate_in_flight",
                        lambda: {n: b.in_flight for n, b in registry.backends.items()})
        telemetry.gauge("tiergate_circuit_state",
                        lambda: {n: CIRCUIT_VALUES[b.breaker.state.value]
                                 for n, b in registry.backends.items()})
        router = build_router(settings.routes, settings.redis_url) if settings.routes else None
        serving = OpenAIServing(settings, registry, telemetry, router)
        recorder = Recorder(settings.records) if settings.records.sink != "none" else None
        if recorder is not None:
            serving.add_listener(recorder)
            telemetry.gauge("tiergate_record_queue_depth", lambda: {"": recorder.pending})
        canaries = CanaryMonitor(settings, registry, serving.dispatcher, telemetry)
        tuples = TupleRegistry(settings, registry, telemetry)
        canaries.run_listeners.append(tuples.on_canary_run)
        drift = build_escalation_drift(settings.routes, settings.canary, telemetry)
        if drift is not None:
            serving.add_listener(drift)
        shadow = None
        if settings.shadow.mirrors:
            shadow = ShadowMirror(settings, registry, telemetry)
            shadow.listeners.append(canaries.on_shadow_pair)
            serving.add_listener(shadow)
            queue = shadow.queue
            telemetry.gauge("tiergate_shadow_queue_depth", lambda: {"": queue.qsize()})
        keys = build_key_gate(settings)
        if keys.enabled:
            serving.add_listener(keys.usage)  # what a request used, for its key's limits and budget
        return cls(
            settings=settings,
            registry=registry,
            serving=serving,
            keys=keys,
            openapi=openapi_document(settings.limits),
            telemetry=telemetry,
            recorder=recorder,
            router=router,
            shadow=shadow,
            canaries=canaries,
            tuples=tuples,
            curves=RouteCurves(settings.routes, router, settings.shadow),
            events=open_event_log(settings),
            escalation_drift=drift,
        )

    async def start(self, wait_for_models: bool = True) -> None:
        """Start the services and the models: all loaded before it returns, or (a server,
        ``wait_for_models=False``) loading in the background. On failure what was started is
        stopped again before the error propagates."""
        secrets.install()  # logging is configured by now (the server, or the host application)
        try:
            await self.keys.start()
            if self.recorder is not None:
                await self.recorder.start()
            if wait_for_models:
                await self.registry.start()
            else:  # each model passes its gates as it loads (ModelRegistry.loaded_hooks)
                self.loading = asyncio.create_task(self.registry.load(), name="tiergate-models")
            await self.tuples.start()  # the gates of the models started: before they serve
            if self.router is not None:
                await self.router.thresholds.start()
            if self.shadow is not None:
                await self.shadow.start()
            await self.canaries.start()
        except BaseException:
            with contextlib.suppress(Exception):
                await self.aclose()
            raise
        if wait_for_models:
            log.info("tiergate serving models: %s", ", ".join(self.registry.backends) or "(none)")
        else:
            log.info("tiergate loading models: %s",
                     ", ".join(self.registry.load_order()) or "(none)")

    async def aclose(self) -> None:
        loading, self.loading = self.loading, None
        if loading is not None:
            loading.cancel()
            await asyncio.gather(loading, return_exceptions=True)
        if self.shadow is not None:
            await self.shadow.aclose()
        await self.canaries.aclose()
        if self.router is not None:
            await self.router.thresholds.aclose()
        await self.tuples.aclose()
        await self.registry.aclose()
        await self.keys.aclose()
        if self.recorder is not None:
            await self.recorder.aclose()  # delivers what is left to the store
        self.telemetry.shutdown()

    async def readiness(self) -> tuple[list[str], dict[str, Any]]:
        """Why the gateway cannot serve now (empty: it can), and every model's health: a model
        that is not ``deferred`` is still loading or failed to load, no model can answer (none
        reachable, or every circuit open), or the record spool is failing or over its limit
        (the recorder refuses requests). A gateway configured without models serves what it is
        configured for (the admin API): that is no reason."""
        models = await self.registry.health()
        reasons = []
        settings = self.settings.models
        waiting = [n for n, h in models.items()
                   if h["status"] == "loading" and not settings[n].deferred]
        failed = [n for n, h in models.items()
                  if h["status"] == "failed" and not settings[n].deferred]
        if waiting:
            reasons.append(f"models loading: {', '.join(waiting)}")
        if failed:
            reasons.append(f"models that failed to load: {', '.join(failed)} (see the log)")
        if models and not waiting and not any(usable(health) for health in models.values()):
            if all(health.get("circuit") == "open" for health in models.values()):
                reasons.append("every model's circuit breaker is open")
            else:
                reasons.append("no model is reachable")
        if self.recorder is not None:
            try:
                self.recorder.admit()
            except ServiceUnavailableError as exc:
                reasons.append(exc.message)
        return reasons, models

    def route_cards(self) -> list[dict[str, Any]]:
        """Routes as ``/v1/models`` entries (``tiergate.kind = "route"``)."""
        return [] if self.router is None else route_cards(self.router, self.registry.created)


def build_key_gate(settings: Settings) -> KeyGate:
    """Client keys: the static ones, the store and the limiter (Redis when configured); the
    budgets are charged each completed request's ``cost_usd`` (the cost model's price)."""
    limiter: Limiter
    if settings.redis_url is not None:
        limiter = RedisLimiter(settings.redis_url, settings.keys.redis_timeout_s,
                               settings.keys.concurrency_lease_s)
    else:
        limiter = LocalLimiter(settings.keys.concurrency_lease_s)
    return KeyGate(settings.auth.api_keys, open_store(settings.keys, settings.redis_url),
                   limiter)
