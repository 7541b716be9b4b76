"""The canary system inside a running gateway: scheduled runs, shadow evidence, rollback.

:class:`CanaryMonitor` wraps the canary core (:class:`canary.service.CanaryService`) for the
server:

- **scheduled runs** every ``canary.interval_s`` of every pinned, scheduled model, against its
  live backend (not through rollbacks: the canary checks the model itself). With Redis, only
  the replica holding the leader lock (:class:`canary.leader.LeaderLock`, renewed every
  ``leader_ttl_s / 3``) runs them;
- **shadow evidence**: pairs the shadow mirror made against a model's pinned version
  (greedy or seeded requests) are fed, in batches, to the model's ``shadow`` drift stream;
- **rollback**: while a model has a standing, unacknowledged alarm and ``rollback = true``, the
  dispatcher sends its traffic (direct, or as a route's tier) to its pinned version. The map of
  rollbacks in force is a :class:`gateway.sharedmap.SharedMap`: with Redis every replica
  applies a rollback (and its end) within a second, whichever replica raised or acknowledged
  it; without Redis the gateway re-reads the canary store every ``refresh_s`` to pick up what
  the CLI changed (``tiergate canary ack``);
- **alerts**: log, the ``tiergate_canary_alerts_total`` metric, and the optional webhook (the
  canary core's alert sinks).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from canary.alerts import Alert
from canary.leader import LeaderLock
from canary.runs import CanaryRun, ShadowComparison
from canary.service import CanaryService, ModelStatus
from canary.settings import CanaryDeployment
from canary.shadow import ShadowPair
from gateway.models.dispatch import Dispatcher
from gateway.models.registry import ModelRegistry
from gateway.sharedmap import SharedMap
from gateway.telemetry.instruments import Telemetry

log = logging.getLogger("tiergate.canaries")

ROLLBACKS_HASH = "tiergate:canary:rollbacks"
ROLLBACKS_CHANNEL = "tiergate:canary:rollbacks:changed"
LEADER_KEY = "tiergate:canary:leader"


STOP_WAIT_S = 5.0
"""How long a stopping monitor waits for its background tasks."""


def rollback_board(settings: CanaryDeployment) -> SharedMap[str]:
    """The rollbacks in force (model → the model serving its pinned version)."""
    return SharedMap("rollbacks", settings.redis_url, ROLLBACKS_HASH, ROLLBACKS_CHANNEL,
                     encode=str, decode=bytes.decode,
                     on_change=lambda model, target: log.warning(
                         "rollback: %s", f"{model}'s traffic goes to {target}" if target
                         else f"{model}'s traffic is back on {model}"))


async def publish_rollback(settings: CanaryDeployment, model: str, target: str | None) -> None:
    """Apply (or end) a rollback on every replica sharing ``settings.redis_url`` — for the CLI,
    which changes the canary store outside any gateway. Without Redis this does nothing: the
    gateways re-read the store."""
    if settings.redis_url is None:
        return
    board = rollback_board(settings)
    await board.start(listen=False)
    try:
        if target is None:
            await board.delete(model)
        else:
            await board.set(model, target)
    finally:
        await board.aclose()


class CanaryMonitor:
    def __init__(self, settings: CanaryDeployment, registry: ModelRegistry, dispatcher: Dispatcher,
                 telemetry: Telemetry) -> None:
        self.settings = settings
        self.config = settings.canary
        self.registry = registry
        self.telemetry = telemetry
        self.service = CanaryService(settings, metric=self._count_alert)
        self.rollbacks = rollback_board(settings)
        dispatcher.redirects = self.rollbacks.values
        self.leader = LeaderLock(settings.redis_url, LEADER_KEY, self.config.leader_ttl_s)
        self._evidence: dict[str, list[ShadowComparison]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self.run_listeners: list[Callable[[str, CanaryRun], Awaitable[None]]] = []
        """Called after every run (the gateway's tuple registry: a passing run re-evaluates)."""
        telemetry.gauge("tiergate_canary_rollback",
                        lambda: {m: 1.0 if m in self.rollbacks.values else 0.0
                                 for m in settings.models})
        telemetry.gauge("tiergate_canary_leader", lambda: {"": 1.0 if self.leader.held else 0.0})

    def _count_alert(self, alert: Alert) -> None:
        self.telemetry.count_canary_alert(alert.model, alert.kind, alert.source)

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        await self.rollbacks.start()
        await self.refresh(count=False)  # what stands already was raised before this process
        self._tasks = [asyncio.create_task(self._refresh_periodically(), name="canary-refresh")]
        if self.config.interval_s > 0:
            self._tasks.append(asyncio.create_task(self._lead(), name="canary-leader"))
            self._tasks.append(asyncio.create_task(self._schedule(), name="canary-schedule"))

    async def aclose(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self._tasks:  # bounded: a Redis client call may swallow a cancellation and wait on
            _, pending = await asyncio.wait(self._tasks, timeout=STOP_WAIT_S)
            for task in pending:
                log.warning("canaries: task %s did not stop within %.0f s", task.get_name(),
                            STOP_WAIT_S)
        self._tasks = []
        await self._feed_evidence()
        await self.leader.release()
        await self.rollbacks.aclose()

    # -- rollback ----------------------------------------------------------------------------

    async def _apply(self, model: str) -> None:
        """Make the rollback map agree with what this process knows of ``model``."""
        target = self.service.rollback_target(model)
        if target == self.rollbacks.values.get(model):
            return
        if target is None:
            await self.rollbacks.delete(model)
        else:
            await self.rollbacks.set(model, target)

    async def refresh(self, count: bool = True) -> None:
        """Re-read the standing alarms from the store. Without Redis the store is the only
        channel (the CLI writes there), so rollbacks follow it; with Redis they follow the
        shared map, which the store's writers update. An alarm the CLI raised (no metric
        counted it) is counted here — with the ``metric`` sink configured, as the gateway's own
        are — by the leader only, so that the replicas together count each alarm once."""
        unmetered = await self.service.refresh()
        if count and self.leader.held and self.service.metered:
            for model, alarm in unmetered.items():
                self.telemetry.count_canary_alert(model, "drift", alarm.source)
        if self.settings.redis_url is None:
            for model in self.settings.models:
                await self._apply(model)

    async def _refresh_periodically(self) -> None:
        while True:
            await asyncio.sleep(self.config.refresh_s)
            try:
                await self._feed_evidence()
                await self.refresh()
            except Exception:
                log.exception("canary refresh failed")

    # -- scheduled runs ----------------------------------------------------------------------

    async def _lead(self) -> None:
        while True:
            await self.leader.acquire()
            await asyncio.sleep(self.config.leader_ttl_s / 3)

    async def _schedule(self) -> None:
        while True:
            await asyncio.sleep(self.config.interval_s)
            if not self.leader.held:
                continue
            try:
                await self.run_scheduled()
            except Exception:
                log.exception("scheduled canary run failed")

    async def run_scheduled(self) -> list[CanaryRun]:
        models = self.service.scheduled_models(await self.service.store.models())
        return [await self.run(model) for model in models]

    async def run(self, model: str) -> CanaryRun:
        """One canary run of ``model`` against its live backend; rollback follows the result."""
        run = await self.service.run(model, self.registry.get(model))
        log.info("canary run of %s: %s", model, run.status)
        await self._apply(model)
        for listener in self.run_listeners:
            try:
                await listener(model, run)
            except Exception:
                log.exception("canary run listener failed")
        return run

    # -- shadow evidence ---------------------------------------------------------------------

    def pinned_of(self, model: str) -> str | None:
        return self.config.for_model(model).pinned

    def on_shadow_pair(self, pair: ShadowPair) -> None:
        """A shadow pair listener: deterministic pairs against the pinned version are drift
        evidence, fed to the canary service in batches (never on the request path)."""
        if pair.deterministic and self.pinned_of(pair.live.model) == pair.shadow.model:
            self._evidence.setdefault(pair.live.model, []).append(pair.drift_evidence())

    async def _feed_evidence(self) -> None:
        evidence, self._evidence = self._evidence, {}
        for model, comparisons in evidence.items():
            try:
                await self.service.observe_shadow(model, comparisons)
            except Exception:  # e.g. the model was unpinned meanwhile
                log.exception("shadow evidence of %s not recorded", model)
                continue
            await self._apply(model)

    # -- operator ----------------------------------------------------------------------------

    async def ack(self, model: str, by: str | None) -> dict[str, Any]:
        closed = await self.service.ack(model, by)
        await self._apply(model)
        return {"model": model, "acknowledged": closed.model_dump(mode="json")
                if closed is not None else None, "rollback_to": self.rollbacks.values.get(model)}

    async def pin(self, model: str) -> None:
        """Pin ``model``'s live version on its configured canary set (a repin restarts the
        evidence and ends a rollback)."""
        await self.service.pin(model, self.registry.get(model))
        await self._apply(model)

    async def unpin(self, model: str) -> None:
        await self.service.unpin(model)
        await self._apply(model)

    async def status(self, model: str) -> ModelStatus:
        return self._live(await self.service.status(model))

    async def statuses(self) -> list[ModelStatus]:
        return [self._live(s) for s in await self.service.statuses()]

    def _live(self, status: ModelStatus) -> ModelStatus:
        """The status with the rollback actually in force on this replica."""
        status.rollback_to = self.rollbacks.values.get(status.model)
        return status


