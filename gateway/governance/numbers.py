"""The team's governance numbers over a window, from what was written down: the registry's
history (which tuple served when, its gate status, its evaluations), the decode records (which
tuple answered each request) and the canary store (drift alarms). ``tiergate report`` prints
them (:mod:`gateway.cli.report`); they add up: every share is a count over a count.

- **tuples**: every (model, tuple digest) the history shows serving in the window, with the
  status of its latest start there and whether it is stale at the window's end;
- **eval coverage (tuples)**: of those, gated and not stale;
- **eval coverage (traffic)**: of the records received in the window that a model answered
  (their last call), those whose tuple — by the record's digest, looked up in the history — was
  gated and not stale *when the request came*;
- **owners**: tuples served with an owner;
- **drift catches**: canary alarms raised in the window (pinned models' alarms: an unpin drops
  a model's state).
"""

from __future__ import annotations

import bisect
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from canary.state import CanaryStore
from gateway.governance.history import Serving, ServingHistory
from gateway.kernel.errors import ConfigError

DAY_S = 86_400.0


@dataclass(slots=True)
class Evaluations:
    """When each tuple digest was evaluated, oldest first."""

    at: dict[str, list[float]]

    def last_before(self, digest: str, when: float) -> float | None:
        times = self.at.get(digest, [])
        i = bisect.bisect_right(times, when)
        return times[i - 1] if i else None


@dataclass(slots=True)
class Window:
    since: float | None
    until: float


@dataclass(slots=True)
class GovernanceNumbers:
    window: Window
    tuples: list[dict[str, Any]] = field(default_factory=list)
    records: int = 0
    """Records received in the window."""
    answered: int = 0
    """Of them, answered by a model (a call on record): the traffic share's denominator."""
    answered_current: int = 0
    """Of those, by a tuple gated and not stale at the time: its numerator."""
    unknown_tuple: int = 0
    """Answered by a tuple the history does not know (served without a history, or the history
    pruned): counted as not current."""
    records_error: str | None = None
    drift_catches: list[dict[str, Any]] | None = None
    drift_error: str | None = None

    def share(self, part: int, whole: int) -> float | None:
        return part / whole if whole else None

    def to_json(self) -> dict[str, Any]:
        served = [t for t in self.tuples if t["status"] != "refused"]
        current = sum(t["current"] for t in self.tuples)
        owners = sum(t["owner"] is not None for t in self.tuples)
        return {
            "window": {"since": self.window.since, "until": self.window.until},
            "tuples": self.tuples,
            "coverage": {
                "tuples": {"current": current, "of": len(self.tuples),
                           "share": self.share(current, len(self.tuples))},
                "traffic": None if self.records_error else {
                    "current": self.answered_current, "of": self.answered,
                    "share": self.share(self.answered_current, self.answered),
                    "records": self.records, "unanswered": self.records - self.answered,
                    "unknown_tuple": self.unknown_tuple},
                "owners": {"with_owner": owners, "of": len(self.tuples),
                           "share": self.share(owners, len(self.tuples))}},
            "records_error": self.records_error,
            "stale": [t["name"] for t in served if t["stale"]],
            "refused": [t["name"] for t in self.tuples if t["status"] == "refused"],
            "overridden": [t["name"] for t in self.tuples if t["status"] == "overridden"],
            "drift_catches": self.drift_catches, "drift_error": self.drift_error}


class GovernanceTally:
    """Counts the window's numbers; :meth:`tuples` first, then each record, then the alarms."""

    def __init__(self, history: ServingHistory, periods: Mapping[str, float],
                 default_period_days: float, window: Window) -> None:
        self.window = window
        self.periods = periods
        self.default_period_days = default_period_days
        self.servings = sorted(history.servings(), key=lambda s: (s.started, s.id))
        self.evaluations = Evaluations(history.evaluation_times())
        self.numbers = GovernanceNumbers(window)
        self._by_tuple: dict[tuple[str, str], list[Serving]] = {}
        for serving in self.servings:
            self._by_tuple.setdefault((serving.name, serving.digest), []).append(serving)

    def period_s(self, name: str) -> float:
        return self.periods.get(name, self.default_period_days) * DAY_S

    def current(self, serving: Serving, when: float) -> bool:
        """Gated, and evaluated within its period before ``when``."""
        at = self.evaluations.last_before(serving.digest, when)
        return serving.status == "gated" and at is not None and \
            when - at <= self.period_s(serving.name)

    def tuples(self) -> None:
        """Every (model, digest) serving in the window, by its latest start there. A start
        serves from ``started`` to ``last_seen`` (a heartbeat every ``check_interval_s``, and at
        stop); each model's latest start is taken as serving still."""
        since, until = self.window.since, self.window.until
        newest = {s.name: s.id for s in self.servings if s.started < until}
        latest: dict[tuple[str, str], Serving] = {}
        for serving in self.servings:
            if serving.started < until and (since is None or serving.last_seen >= since
                                            or newest[serving.name] == serving.id):
                latest[(serving.name, serving.digest)] = serving
        for (name, digest), serving in sorted(latest.items()):
            at = self.evaluations.last_before(digest, until)
            stale = serving.status != "refused" and (
                at is None or until - at > self.period_s(name))
            self.numbers.tuples.append({
                "name": name, "digest": digest, "status": serving.status,
                "owner": serving.owner, "override": serving.override,
                "failed_gates": [g["gate"] for g in serving.gates if not g.get("passed")],
                "evaluated_at": at, "stale": stale,
                "current": serving.status == "gated" and not stale})

    def record(self, body: bytes) -> None:
        """One record of the window: which tuple answered it, and was it current then."""
        self.numbers.records += 1
        record = orjson.loads(body)
        calls = record.get("calls") or []
        if not calls:
            return
        self.numbers.answered += 1
        call = calls[-1]
        name, digest = str(call["model"].get("name")), call["tuple_digest"]
        when = float(record["received_at"])
        starts = [s for s in self._by_tuple.get((name, digest), []) if s.started <= when]
        if not starts:
            self.numbers.unknown_tuple += 1
            return
        self.numbers.answered_current += self.current(starts[-1], when)

    async def records(self, bodies: AsyncIterator[bytes]) -> None:
        async for body in bodies:
            self.record(body)

    async def drift(self, store: CanaryStore) -> None:
        """Alarms raised in the window, standing or acknowledged, of the pinned models."""
        since, until = self.window.since, self.window.until
        try:
            catches: list[dict[str, Any]] = []
            for model in await store.models():
                state = await store.get_state(model)
                if state is None:
                    continue
                alarms = [*state.past_alarms, *([state.alarm] if state.alarm else [])]
                catches.extend(
                    {"model": model, "raised_at": a.raised_at, "source": a.source,
                     "summary": a.summary, "acknowledged_at": a.acknowledged_at}
                    for a in alarms
                    if a.raised_at < until and (since is None or a.raised_at >= since))
        except (ConfigError, OSError) as exc:
            self.numbers.drift_error = f"the canary store is not readable: {exc}"
            return
        self.numbers.drift_catches = sorted(catches, key=lambda c: c["raised_at"])
