"""Drift alerts and where they go: sinks chosen by name from :data:`ALERT_SINKS`.

An :class:`Alert` is raised when a pinned model's drift state turns to ``drift`` (and when an
operator acknowledges it), and by the gateway's tuple registry when a model's last evaluation
grows older than its re-evaluation period (``stale``). Sinks:

- ``log``: a ``WARNING`` line on the ``tiergate.canary`` logger (always safe);
- ``metric``: a callable the gateway registers (it counts alerts in its own metrics); without
  one (the CLI) the sink is skipped;
- ``webhook``: an HTTP POST of the alert as JSON to ``canary.webhook_url`` with a timeout.

:func:`deliver` sends an alert to every sink concurrently; a sink never raises into the caller
(a failure is logged), so a broken webhook cannot stop a canary run or a rollback.
"""

from __future__ import annotations

import asyncio
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from types import MappingProxyType
from typing import Any, Literal, Protocol

log = logging.getLogger("tiergate.canary")

AlertKind = Literal["drift", "acknowledged", "stale"]


@dataclass(frozen=True, slots=True)
class Alert:
    """A change of a pinned model's drift state, for people and machines."""

    kind: AlertKind
    model: str
    raised_at: float
    summary: str
    """One line: what drifted, where, and what happens now."""
    streams: list[dict[str, Any]] = field(default_factory=list)
    """The alarms behind it (:class:`canary.drift.StreamAlarm` as JSON)."""
    run_id: str | None = None
    source: str = "canary"
    """``canary`` (a canary run), ``shadow`` (mirrored traffic), ``tuple`` (the served model
    tuple differs from the pinned one), ``operator`` (an ack), ``registry`` (a stale tuple),
    ``escalation`` (a route's routing decisions drifted from its calibration; ``model`` is then
    the route)."""
    rollback_to: str | None = None
    """The pinned version traffic now goes to, when rollback is on."""
    acknowledged_by: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"type": "tiergate.canary.alert", **asdict(self)}


class AlertSink(ABC):
    name: str = ""

    @abstractmethod
    async def send(self, alert: Alert) -> None:
        """Deliver ``alert``. Implementations catch their own failures (log them)."""


class LogSink(AlertSink):
    name = "log"

    async def send(self, alert: Alert) -> None:
        level = logging.WARNING if alert.kind in ("drift", "stale") else logging.INFO
        log.log(level, "canary %s: %s: %s", alert.kind, alert.model, alert.summary)


class MetricSink(AlertSink):
    """Calls ``record(alert)``: the gateway passes a function that updates its metrics."""

    name = "metric"

    def __init__(self, record: Callable[[Alert], None]) -> None:
        self.record = record

    async def send(self, alert: Alert) -> None:
        try:
            self.record(alert)
        except Exception:
            log.exception("canary metric sink failed for %s", alert.model)


class WebhookSink(AlertSink):
    """POSTs the alert as JSON; a timeout or an error status is logged, never raised."""

    name = "webhook"

    def __init__(self, url: str, timeout_s: float = 5.0) -> None:
        self.url = url
        self.timeout_s = timeout_s

    async def send(self, alert: Alert) -> None:
        import aiohttp

        try:
            timeout = aiohttp.ClientTimeout(total=self.timeout_s)
            async with aiohttp.ClientSession(timeout=timeout) as session, \
                    session.post(self.url, json=alert.to_json()) as response:
                if response.status >= 300:
                    log.warning("canary webhook %s answered %d for %s alert of %s", self.url,
                                response.status, alert.kind, alert.model)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            log.warning("canary webhook %s failed for %s alert of %s: %s", self.url,
                        alert.kind, alert.model, exc or type(exc).__name__)


class AlertSettings(Protocol):
    """What the sinks read of ``[canary]`` (:class:`canary.settings.CanarySettings`)."""

    @property
    def alert_sinks(self) -> Sequence[str]: ...
    @property
    def webhook_url(self) -> str | None: ...
    @property
    def webhook_timeout_s(self) -> float: ...


SinkFactory = Callable[["AlertSettings", "Callable[[Alert], None] | None"], "AlertSink | None"]


def _log(settings: AlertSettings, metric: Callable[[Alert], None] | None) -> AlertSink:
    return LogSink()


def _metric(settings: AlertSettings,
            metric: Callable[[Alert], None] | None) -> AlertSink | None:
    return MetricSink(metric) if metric is not None else None


def _webhook(settings: AlertSettings,
             metric: Callable[[Alert], None] | None) -> AlertSink | None:
    url = settings.webhook_url
    return WebhookSink(url, settings.webhook_timeout_s) if url else None


ALERT_SINKS: Mapping[str, SinkFactory] = MappingProxyType(
    {"log": _log, "metric": _metric, "webhook": _webhook})
"""The registry: sink name → factory ``(canary settings, metric callback) -> sink | None``."""


def build_sinks(settings: AlertSettings,
                metric: Callable[[Alert], None] | None = None) -> list[AlertSink]:
    """The sinks named in ``settings.alert_sinks`` (``metric`` only when a callback is given)."""
    sinks = [ALERT_SINKS[name](settings, metric) for name in settings.alert_sinks]
    return [sink for sink in sinks if sink is not None]


async def deliver(alert: Alert, sinks: Sequence[AlertSink]) -> None:
    """Send ``alert`` to every sink at once; never raises (failures are logged)."""
    results = await asyncio.gather(*(sink.send(alert) for sink in sinks),
                                   return_exceptions=True)
    for sink, result in zip(sinks, results, strict=True):
        if isinstance(result, BaseException):
            log.error("canary alert sink %s failed: %r", sink.name, result)
