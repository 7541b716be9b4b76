"""The canary service: pin, run, decide drift, alert, acknowledge, and answer "roll back?".

:class:`CanaryService` is the one object the CLI and the gateway use. It holds no HTTP and no
backend of its own: callers pass the :class:`~gateway.kernel.backend.Backend` to pin or run
(the gateway's registry entry, or one the CLI started). Everything durable lives in the
:class:`~canary.state.CanaryStore`; the service keeps in memory only the standing alarms that
:meth:`CanaryService.rollback_target` reads on the request path (refresh them from the store
with :meth:`CanaryService.refresh` when another process may have changed them).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from canary.alerts import Alert, AlertSink, build_sinks, deliver
from canary.drift import DriftConfig, StreamAlarm, plan_streams
from canary.pins import Pin, decode_golden, make_pin
from canary.runs import CanaryRun, ShadowComparison, execute_run
from canary.sets import REFERENCE_SET, CanarySet, load_canary_set
from canary.settings import CanaryDeployment
from canary.state import Alarm, AlarmSource, CanaryStore, FileCanaryStore, ModelState
from gateway.kernel.backend import Backend
from gateway.kernel.errors import ConflictError, NotFoundError

log = logging.getLogger("tiergate.canary")


@dataclass(slots=True)
class ModelStatus:
    """What ``tiergate canary status`` and the admin API show for one model."""

    model: str
    pin: Pin | None
    state: ModelState | None
    last_run: CanaryRun | None
    pinned_backend: str | None
    """The configured model serving the frozen version (``canary.models.NAME.pinned``)."""
    rollback_enabled: bool
    rollback_to: str | None
    """Where this model's traffic goes now (None: to the model itself)."""

    @property
    def status(self) -> str:
        if self.pin is None:
            return "not pinned"
        return self.state.status if self.state is not None else "ok"

    def to_json(self) -> dict[str, Any]:
        pin = None
        if self.pin is not None:
            pin = {"version": self.pin.version, "created_at": self.pin.created_at,
                   "tuple": self.pin.model_tuple.model_dump(mode="json"),
                   "tuple_digest": self.pin.tuple_digest, "set_path": self.pin.set_path,
                   "set_sha256": self.pin.set_sha256, "items": len(self.pin.golden),
                   "golden_pass_rate": self.pin.pass_rate,
                   "golden_slices": {k: {"passed": p, "items": n}
                                     for k, (p, n) in self.pin.slice_pass_counts().items()}}
        return {
            "model": self.model, "status": self.status, "pin": pin,
            "state": self.state.model_dump(mode="json") if self.state else None,
            "last_run": self.last_run.model_dump(mode="json") if self.last_run else None,
            "pinned_backend": self.pinned_backend, "rollback_enabled": self.rollback_enabled,
            "rollback_to": self.rollback_to,
        }


class CanaryService:
    """Pins, canary runs, drift state and rollback decisions of the configured models."""

    def __init__(self, settings: CanaryDeployment, store: CanaryStore | None = None,
                 sinks: Sequence[AlertSink] | None = None,
                 metric: Callable[[Alert], None] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.config = settings.canary
        self.store: CanaryStore = store or FileCanaryStore(self.config.dir)
        self.sinks = list(sinks) if sinks is not None else build_sinks(self.config, metric)
        self.metered = any(sink.name == "metric" for sink in self.sinks)
        """Whether this process counts the alerts it raises in a metric (a gateway's)."""
        self.clock = clock
        self._standing: dict[str, Alarm] = {}

    # -- configuration -----------------------------------------------------------------------

    def set_path(self, model: str) -> Path:
        """The canary set configured for ``model`` (its own, the default, or the shipped one)."""
        return (self.config.for_model(model).canary_set or self.config.default_set
                or REFERENCE_SET)

    def drift_config(self) -> DriftConfig:
        c = self.config
        return DriftConfig(test=c.drift_test, false_alarm_rate=c.false_alarm_rate,
                           pass_rate_drop=c.pass_rate_drop,
                           agreement_tolerance=c.agreement_tolerance,
                           agreement_alternative=c.agreement_alternative)

    def scheduled_models(self, pinned: Sequence[str]) -> list[str]:
        """Of ``pinned`` (from :meth:`CanaryStore.models`), those scheduled runs should check."""
        return [m for m in pinned if m in self.settings.models
                and self.config.for_model(m).scheduled]

    def require_configured(self, model: str) -> None:
        if model not in self.settings.models:
            raise NotFoundError(f"model {model!r} is not configured", param="model")

    # -- pin / unpin -------------------------------------------------------------------------

    async def pin(self, model: str, backend: Backend, set_path: Path | None = None) -> Pin:
        """Decode the canary set on ``backend`` greedily and make the result ``model``'s pin.

        A repin keeps the older pin as a version and restarts the drift evidence."""
        self.require_configured(model)
        canary_set = load_canary_set((set_path or self.set_path(model)).resolve())
        runs = await decode_golden(backend, canary_set, self.config.concurrency)
        async with self.store.lock(model):
            version = max(await self.store.pin_versions(model), default=0) + 1
            pin = make_pin(model, backend.describe(), canary_set, runs, version, self.clock())
            state = ModelState(model=model, pin_version=pin.version,
                               drift=plan_streams(pin.slice_pass_counts(), self.drift_config()))
            await self.store.put_pin(pin)
            await self.store.put_state(state)
        self._standing.pop(model, None)
        log.info("canary: pinned %s v%d (%s) on %s: %d items, golden pass rate %.1f%%", model,
                 pin.version, pin.tuple_digest[:19], canary_set.path.name, len(pin.golden),
                 100 * pin.pass_rate)
        return pin

    async def unpin(self, model: str) -> None:
        await self.get_pin(model)
        async with self.store.lock(model):
            if not await self.store.unpin(model):
                raise NotFoundError(f"model {model!r} is not pinned", param="model")
        self._standing.pop(model, None)

    # -- runs --------------------------------------------------------------------------------

    async def get_pin(self, model: str) -> Pin:
        pin = await self.store.get_pin(model)
        if pin is None:
            raise NotFoundError(f"model {model!r} is not pinned (tiergate canary pin {model})",
                                param="model")
        return pin

    def pinned_set(self, pin: Pin) -> CanarySet:
        """The set ``pin`` was made from: the configured file or the pinned path, whichever
        has the pinned sha256 (a set edited since the pin is refused: repin)."""
        seen: list[str] = []
        for path in dict.fromkeys([self.set_path(pin.model).resolve(), Path(pin.set_path)]):
            if path.is_file():
                canary_set = load_canary_set(path)
                if canary_set.sha256 == pin.set_sha256:
                    return canary_set
                seen.append(f"{path} has sha256 {canary_set.sha256[:12]}")
        raise ConflictError(f"the canary set of {pin.model}'s pin (sha256 {pin.set_sha256[:12]}) "
                            f"is gone or changed ({'; '.join(seen) or 'no file'}): repin it")

    async def run(self, model: str, backend: Backend) -> CanaryRun:
        """One canary run of ``model`` on ``backend``: compare, update drift, store, alert."""
        self.require_configured(model)
        pin = await self.get_pin(model)
        run = await execute_run(pin, backend, self.pinned_set(pin), self.config.concurrency)
        alert: Alert | None = None
        async with self.store.lock(model):
            state = await self._state(model)
            if state.pin_version == pin.version:
                alert = self._apply_run(state, run)
                state.runs += 1
                state.last_run_at = run.started_at
                await self.store.put_state(state)
            else:
                log.warning("canary: %s was repinned during run %s; its evidence is dropped",
                            model, run.id)
            run.status = state.status
            run.standing_alarms = list(state.alarm.streams) if state.alarm else []
            await self.store.append_run(run, self.config.history)
        self._remember(state)
        if alert is not None:
            await deliver(alert, self.sinks)
        return run

    def _apply_run(self, state: ModelState, run: CanaryRun) -> Alert | None:
        now = self.clock()
        answered = [i for i in run.items if i.error is None]  # an outage is not drift
        by_slice: dict[str, list[bool]] = {}
        for item in answered:
            by_slice.setdefault(item.slice, []).append(item.passed)
        raised = [state.drift.observe(f"pass/{name}", outcomes, now)
                  for name, outcomes in by_slice.items()]
        raised.append(state.drift.observe("pass/all", [i.passed for i in answered], now))
        raised.append(state.drift.observe("agreement", [i.agree for i in answered], now))
        run.new_alarms = [a for a in raised if a is not None]
        source: AlarmSource = "canary"
        if run.tuple_changed and (state.alarm is None or not state.alarm.tuple_changes):
            source = "tuple"
        if not run.new_alarms and source != "tuple":
            return None
        return self._raise(state, source, run.new_alarms, now, run.id, run.tuple_changes)

    def _raise(self, state: ModelState, source: AlarmSource, alarms: list[StreamAlarm], now: float,
               run_id: str | None = None,
               changes: dict[str, tuple[Any, Any]] | None = None) -> Alert | None:
        """Open (or extend) the model's standing alarm; the alert for a newly opened one."""
        parts = [a.evidence for a in alarms]
        if changes:
            parts.insert(0, "served tuple differs from the pin: " + ", ".join(
                f"{k} {_short(old)} -> {_short(new)}" for k, (old, new) in changes.items()))
        if state.alarm is not None:  # already drifting: add the evidence, no second alert
            state.alarm.streams.extend(alarms)
            if changes:
                state.alarm.tuple_changes = changes
            return None
        target = self._target(state.model)
        summary = "; ".join(parts) + (f"; traffic goes to {target} until ack" if target else "")
        state.alarm = Alarm(raised_at=now, source=source, run_id=run_id, summary=summary,
                            streams=alarms, tuple_changes=changes or {}, metered=self.metered)
        return Alert(kind="drift", model=state.model, raised_at=now, summary=summary,
                     streams=[a.model_dump(mode="json") for a in alarms], run_id=run_id,
                     source=source, rollback_to=target)

    async def observe_shadow(self, model: str,
                             comparisons: Sequence[ShadowComparison]) -> Alarm | None:
        """Add a batch of shadow comparisons (greedy live requests vs the pinned version) to
        ``model``'s ``shadow`` stream. Returns the model's standing alarm, if any."""
        if not comparisons:
            return self._standing.get(model)
        alert: Alert | None = None
        async with self.store.lock(model):
            state = await self.store.get_state(model)
            if state is None:
                return None
            now = self.clock()
            raised = state.drift.observe("shadow", [c.agree for c in comparisons], now)
            if raised is not None:
                alert = self._raise(state, "shadow", [raised], now)
            await self.store.put_state(state)
        self._remember(state)
        if alert is not None:
            await deliver(alert, self.sinks)
        return state.alarm

    # -- operator ----------------------------------------------------------------------------

    async def ack(self, model: str, by: str | None = None) -> Alarm | None:
        """Acknowledge ``model``'s alarm: rollback ends, the drift evidence restarts. Returns
        the closed alarm (None if there was none; the evidence restarts anyway)."""
        await self.get_pin(model)
        async with self.store.lock(model):
            state = await self._state(model)
            now = self.clock()
            closed = state.acknowledge(now, by)
            await self.store.put_state(state)
        self._remember(state)
        if closed is not None:
            await deliver(Alert(kind="acknowledged", model=model, raised_at=now,
                                summary=f"alarm of {_when(closed.raised_at)} acknowledged"
                                        f"{f' by {by}' if by else ''}; traffic back to {model}",
                                source="operator", acknowledged_by=by), self.sinks)
        return closed

    async def status(self, model: str) -> ModelStatus:
        pin = await self.store.get_pin(model)
        state = await self.store.get_state(model) if pin is not None else None
        runs = await self.store.runs(model, limit=1)
        if state is not None:
            self._remember(state)
        settings = self.config.for_model(model)
        return ModelStatus(model=model, pin=pin, state=state, last_run=runs[-1] if runs else None,
                           pinned_backend=settings.pinned, rollback_enabled=settings.rollback,
                           rollback_to=self.rollback_target(model))

    async def statuses(self) -> list[ModelStatus]:
        return [await self.status(model) for model in await self.store.models()]

    # -- the request path --------------------------------------------------------------------

    def rollback_target(self, model: str) -> str | None:
        """Where ``model``'s traffic should go instead, or None. Memory only (no I/O): the
        pinned version's model while an unacknowledged drift alarm stands and the model has
        ``rollback = true``."""
        return self._target(model) if model in self._standing else None

    async def refresh(self) -> dict[str, Alarm]:
        """Reload the standing alarms from the store (changes by other processes). Returns the
        ones this process did not know that no metric counted when they were raised (by the
        CLI), for the gateway to count."""
        standing: dict[str, Alarm] = {}
        for model in await self.store.models():
            state = await self.store.get_state(model)
            if state is not None and state.alarm is not None:
                standing[model] = state.alarm
        unmetered = {model: alarm for model, alarm in standing.items()
                     if not alarm.metered and (model not in self._standing
                                               or self._standing[model].raised_at
                                               != alarm.raised_at)}
        self._standing = standing
        return unmetered

    def _target(self, model: str) -> str | None:
        settings = self.config.for_model(model)
        return settings.pinned if settings.rollback else None

    def _remember(self, state: ModelState) -> None:
        if state.alarm is not None:
            self._standing[state.model] = state.alarm
        else:
            self._standing.pop(state.model, None)

    async def _state(self, model: str) -> ModelState:
        state = await self.store.get_state(model)
        if state is None:  # a pin without state (e.g. the state file was removed): start over
            pin = await self.get_pin(model)
            state = ModelState(model=model, pin_version=pin.version,
                               drift=plan_streams(pin.slice_pass_counts(), self.drift_config()))
        return state


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else repr(value)
    return text[:16] + "…" if len(text) > 20 else text


def _when(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(at))
