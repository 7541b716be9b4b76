"""Escalation drift: a route's live decisions against what its threshold was calibrated for.

A verifier that meets traffic unlike its training data degrades quietly: the threshold still
escalates ``score >= threshold``, but a small model that changes how it writes its answers (a
new version, a new system prompt) can move the escalation share from the promised 40 % to 99 %
— or the scores can drift while the share still looks plausible. For each route with
``expected_escalation`` and / or ``expected_score_median`` (``[routes.NAME]``, printed by
``tiergate thresholds suggest``), :class:`EscalationDrift` (a request listener) watches two
Bernoulli streams of the route's decisions, each in both directions:

- ``escalation``: was the request escalated? H0: ``p = expected_escalation``; H1: ``p ± shift``.
  Observed only while the live threshold is the configured one (a threshold changed through the
  admin API escalates another share by design);
- ``score``: was the score ``>= expected_score_median``? H0: ``p = 0.5``; H1: ``0.5 ± shift``.

Each of the four one-sided tests is Page's CUSUM on the log-likelihood ratio, floored at 0 after
every decision. It alarms when the statistic reaches ``h = log(4 * false_alarm_every)``: under H0
the expected number of decisions before a false alarm of one test is at least ``e^h`` (Lorden),
so a route sees a false alarm at most about once every ``false_alarm_every`` decisions; a shift
of ``shift`` is found in about ``h / KL(p1 || p0)`` decisions (defaults ``shift`` 0.1,
``false_alarm_every`` 100 000, so ``h`` ≈ 12.9: a share that moves from 40 % to 50 % in ≈ 630
decisions, from 40 % to 99 % — every answer read as truncated — in ≈ 60). An alarm sends an
:class:`~canary.alerts.Alert` (``source="escalation"``) through the canary alert sinks
(``[canary] alert_sinks``: log, metric, webhook) and restarts the route's statistics, so a
sustained shift alarms again after as many decisions.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from canary.alerts import Alert, AlertSink, build_sinks, deliver
from canary.settings import CanarySettings
from gateway.listener import CompletedRequest, RequestListener
from gateway.telemetry.instruments import Telemetry
from router.decision import Decision
from router.settings import RouteSettings

log = logging.getLogger("tiergate.canary")
STREAMS = 4
"""Tests per route: the escalation share and the score median, each up and down."""


@dataclass(slots=True)
class OneSidedCusum:
    """Page's CUSUM for a Bernoulli stream: H0 ``p0`` against H1 ``p1``."""

    name: str
    p0: float
    p1: float
    statistic: float = 0.0

    def observe(self, success: bool) -> float:
        ratio = self.p1 / self.p0 if success else (1 - self.p1) / (1 - self.p0)
        self.statistic = max(0.0, self.statistic + math.log(ratio))
        return self.statistic


def _pair(stream: str, p0: float, shift: float) -> list[OneSidedCusum]:
    """The up and down tests of one stream (a direction whose H1 leaves (0, 1) is dropped)."""
    p0 = min(max(p0, 0.005), 0.995)
    tests = []
    if p0 + shift < 1.0:
        tests.append(OneSidedCusum(f"{stream}-up", p0, p0 + shift))
    if p0 - shift > 0.0:
        tests.append(OneSidedCusum(f"{stream}-down", p0, p0 - shift))
    return tests


@dataclass(slots=True)
class RouteWatch:
    """The drift state of one route (in memory, per gateway process)."""

    route: str
    threshold: float
    """The configured threshold the expectations were calibrated for."""
    expected_escalation: float | None
    expected_score_median: float | None
    escalation: list[OneSidedCusum] = field(default_factory=list)
    score: list[OneSidedCusum] = field(default_factory=list)
    decisions: int = 0
    """Decisions at the calibrated threshold since the start or the last alarm..."""
    escalated: int = 0
    """...of which escalated (the share gauge)."""
    scored: int = 0
    above_median: int = 0
    """Decisions with a score (any threshold), and of those scored at or above the median."""
    alarms: int = 0

    @property
    def share(self) -> float:
        return self.escalated / self.decisions if self.decisions else 0.0

    def reset(self) -> None:
        for test in (*self.escalation, *self.score):
            test.statistic = 0.0
        self.decisions = self.escalated = self.scored = self.above_median = 0


@dataclass(frozen=True, slots=True)
class DriftExpectation:
    """What a route was calibrated for (from ``[routes.NAME]``)."""

    threshold: float
    expected_escalation: float | None = None
    expected_score_median: float | None = None


class EscalationDrift(RequestListener):
    """Watches the routing decisions of the routes that state what they were calibrated for."""

    name = "escalation-drift"

    def __init__(self, routes: Mapping[str, DriftExpectation], sinks: Sequence[AlertSink], *,
                 shift: float = 0.1, false_alarm_every: float = 100_000.0) -> None:
        if not 0.0 < shift < 1.0 or false_alarm_every < 1.0:
            raise ValueError("escalation drift needs 0 < shift < 1 and false_alarm_every >= 1")
        self.sinks = list(sinks)
        self.h = math.log(STREAMS * false_alarm_every)
        """The alarm level of every test."""
        self.watches: dict[str, RouteWatch] = {}
        for route, expected in routes.items():
            watch = RouteWatch(route, expected.threshold, expected.expected_escalation,
                               expected.expected_score_median)
            if expected.expected_escalation is not None:
                watch.escalation = _pair("escalation", expected.expected_escalation, shift)
            if expected.expected_score_median is not None:
                watch.score = _pair("score", 0.5, shift)
            if watch.escalation or watch.score:
                self.watches[route] = watch
        self.alerts: list[Alert] = []
        """Every alert raised, oldest first (in memory; the sinks deliver them)."""
        self._sending: set[asyncio.Task[None]] = set()

    def completed(self, done: CompletedRequest) -> None:
        if done.decision is not None:
            self.observe(done.decision)

    def observe(self, decision: Decision) -> Alert | None:
        """Feed one routing decision; returns the alert when it raised one."""
        watch = self.watches.get(decision.route)
        if watch is None or decision.score is None:
            return None
        crossed: list[tuple[str, float]] = []
        if decision.threshold == watch.threshold:  # the threshold the share was calibrated for
            watch.decisions += 1
            watch.escalated += decision.escalated
            for test in watch.escalation:
                if test.observe(decision.escalated) >= self.h:
                    crossed.append((test.name, test.statistic))
        watch.scored += 1
        if watch.score and watch.expected_score_median is not None:
            above = decision.score >= watch.expected_score_median
            watch.above_median += above
            for test in watch.score:
                if test.observe(above) >= self.h:
                    crossed.append((test.name, test.statistic))
        if not crossed:
            return None
        return self._alarm(watch, crossed)

    def _alarm(self, watch: RouteWatch, crossed: list[tuple[str, float]]) -> Alert:
        parts = []
        if watch.expected_escalation is not None:
            parts.append(f"escalated {watch.share:.1%} of the last {watch.decisions} decisions "
                         f"(calibrated for {watch.expected_escalation:.1%} at threshold "
                         f"{watch.threshold:g})")
        if watch.expected_score_median is not None and watch.scored:
            parts.append(f"{watch.above_median / watch.scored:.1%} of scores >= the "
                         f"calibration median {watch.expected_score_median:g} (expected 50%)")
        alert = Alert(
            kind="drift", model=watch.route, raised_at=time.time(), source="escalation",
            summary=f"route {watch.route}: the verifier's decisions drifted: "
                    + "; ".join(parts) + " — re-check the verifier and its threshold on recent "
                    "traffic (tiergate collect, thresholds suggest)",
            streams=[{"stream": name, "statistic": statistic, "threshold": self.h}
                     for name, statistic in crossed])
        watch.alarms += 1
        watch.reset()
        self.alerts.append(alert)
        self._send(alert)
        return alert

    def _send(self, alert: Alert) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (a notebook, a test feeding decisions): log it here
            log.warning("escalation drift: %s", alert.summary)
            return
        task = loop.create_task(deliver(alert, self.sinks), name="escalation-drift-alert")
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    def gauges(self) -> dict[str, dict[str, float]]:
        """Per route: the escalation share observed since the last alarm, the calibrated share,
        and the evidence (largest statistic / alarm level, 1 = alarm)."""
        return {
            "share": {r: w.share for r, w in self.watches.items()},
            "expected": {r: w.expected_escalation for r, w in self.watches.items()
                         if w.expected_escalation is not None},
            "evidence": {r: max((t.statistic for t in (*w.escalation, *w.score)),
                                default=0.0) / self.h for r, w in self.watches.items()},
        }


def build_escalation_drift(routes: Mapping[str, RouteSettings], canary: CanarySettings,
                           telemetry: Telemetry) -> EscalationDrift | None:
    """The listener for the routes that state what they were calibrated for (``None`` when no
    route does), alerting through ``[canary] alert_sinks`` and reporting its gauges."""
    expectations = {
        name: DriftExpectation(route.threshold, route.expected_escalation,
                               route.expected_score_median)
        for name, route in routes.items()
        if route.expected_escalation is not None or route.expected_score_median is not None}
    if not expectations:
        return None
    sinks = build_sinks(canary, lambda alert: telemetry.count_canary_alert(
        alert.model, alert.kind, alert.source))
    drift = EscalationDrift(expectations, sinks, shift=canary.escalation_shift,
                            false_alarm_every=canary.escalation_false_alarm_every)
    telemetry.gauge("tiergate_route_escalation_share", lambda: drift.gauges()["share"])
    telemetry.gauge("tiergate_route_escalation_expected", lambda: drift.gauges()["expected"])
    telemetry.gauge("tiergate_route_drift_evidence", lambda: drift.gauges()["evidence"])
    return drift
