"""A route's quality-vs-escalation curve, as ``GET /admin/routes/{route}/curve`` returns it.

Two sources of labelled rows, each scored by the route's **loaded** verifier exactly as the
router scores a request (``score(VerifierInput(prompt, small answer, no slice))``, the call
``tiergate thresholds suggest`` makes), then turned into every reachable operating point by
:func:`router.calibration.operating_points`:

- ``evaluation``: the route's ``evaluation_data`` (labelled pairs as ``tiergate collect`` writes
  them), only the rows :func:`verifiers.holdout.calibration_rows` lets calibrate (the verifier's
  own training rows are refused: they would flatter every threshold);
- ``live``: the shadow pairs of the route's two tiers (``[shadow.mirrors]``, relation ``tier``),
  graded with the large answer as the reference (:func:`gateway.verifier_data.shadow_rows`,
  exact match): ``accuracy`` is then the share of answers that agree with the large model's,
  escalated requests counting as agreeing.

Costs are per request relative to always-large, one large call costing :data:`COST_RATIO`
small ones (the default of ``thresholds suggest``). Scoring runs in a worker thread and is
cached per (route, source) until the data changes (the file's sha256, the number of live
pairs and the newest one's time); the threshold in force is read on every call, so moving it
needs no rescoring. No data is an answer (``rows: 0`` and a ``note``), never an error.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from canary.settings import ShadowSettings
from router.calibration import CostModel, OperatingPoint, measure, operating_points
from router.settings import RouteSettings

if TYPE_CHECKING:
    from router.policy import Route, Router
    from verifiers.data import Example

Source = Literal["evaluation", "live"]
SOURCES: tuple[Source, ...] = ("evaluation", "live")
COST_RATIO = 10.0
"""One large call costs this many small calls (``tiergate thresholds suggest --cost-ratio``)."""


@dataclass(frozen=True, slots=True)
class ScoredRows:
    """Rows of one source scored by the route's verifier (or why there are none)."""

    key: tuple[Any, ...]
    """What the rows were read from: a change means rescoring."""
    scores: list[float]
    small: list[bool]
    large: list[bool]
    note: str | None = None


def _point(point: OperatingPoint) -> dict[str, Any]:
    return {"threshold": point.threshold, "escalation": point.share,
            "accuracy": point.accuracy, "cost": point.cost}


def _score(verifier: Any, examples: list[Example]) -> list[float]:
    """Each row scored as the router scores a request: one at a time, no slice label, BLAS
    threads capped (spinning thread pools around tiny predicts are slower on few cores)."""
    from threadpoolctl import threadpool_limits  # type: ignore[import-untyped, unused-ignore]

    from verifiers.data import VerifierInput

    with threadpool_limits(limits=1):
        return [float(verifier.score(VerifierInput(e.prompt, e.small, None)))
                for e in examples]


class RouteCurves:
    """The curves of a gateway's routes, cached per (route, source)."""

    def __init__(self, routes: Mapping[str, RouteSettings], router: Router | None,
                 shadow: ShadowSettings) -> None:
        self.routes = routes
        self.router = router
        self.shadow = shadow
        self._cache: dict[tuple[str, Source], ScoredRows] = {}
        self._lock = asyncio.Lock()
        """One scoring at a time: a second caller waits for the cache instead of rescoring."""

    async def curve(self, name: str, source: Source) -> dict[str, Any]:
        """The curve of route ``name`` (configured: the caller checked) on ``source``."""
        assert self.router is not None
        route, settings = self.router.routes[name], self.routes[name]
        threshold = self.router.thresholds.get(name)
        cost = CostModel("cascade" if route.mode == "cascade" else "prompt", COST_RATIO)
        answer: dict[str, Any] = {
            "route": name, "source": source, "rows": 0, "threshold": threshold,
            "acc_small": None, "acc_large": None, "points": [], "current": None,
            "cost_unit": f"per request, relative to always-large ({cost.describe()})",
            "note": None}
        if route.verifier is None:
            answer["note"] = (f"route {name} is {route.mode}: it scores no request, so it has "
                              "no curve")
            return answer
        async with self._lock:
            rows = await asyncio.to_thread(self._rows, name, route, settings, source)
        answer["note"] = rows.note
        if not rows.scores:
            return answer
        score_range = self.router.thresholds.ranges.get(name, (0.0, 1.0))
        points = operating_points(rows.scores, rows.small, rows.large, cost, score_range)
        current = measure(rows.scores, rows.small, rows.large, threshold, cost)
        answer.update(rows=len(rows.scores), acc_small=float(np.mean(rows.small)),
                      acc_large=float(np.mean(rows.large)),
                      points=sorted((_point(p) for p in points),
                                    key=lambda p: (p["escalation"], -p["threshold"])),
                      current=_point(current))
        return answer

    def _rows(self, name: str, route: Route, settings: RouteSettings,
              source: Source) -> ScoredRows:
        """The scored rows of ``source`` (a worker thread): cached while the data is the same."""
        read = self._evaluation_rows if source == "evaluation" else self._live_rows
        return read(name, route, settings)

    def _cached(self, name: str, source: Source, key: tuple[Any, ...],
                examples: list[Example], large: list[bool], verifier: Any) -> ScoredRows:
        cached = self._cache.get((name, source))
        if cached is not None and cached.key == key:
            return cached
        rows = ScoredRows(key, _score(verifier, examples),
                          [bool(e.small_correct) for e in examples], large)
        self._cache[(name, source)] = rows
        return rows

    def _evaluation_rows(self, name: str, route: Route, settings: RouteSettings) -> ScoredRows:
        from verifiers.artifact import file_sha256
        from verifiers.errors import VerifierError
        from verifiers.holdout import calibration_rows

        data = settings.evaluation_data
        if data is None:
            return ScoredRows((), [], [], [], note=(
                f"route {name} has no evaluation data: set [routes.{name}] evaluation_data to "
                "labelled pairs its verifier never trained on (tiergate collect)"))
        manifest = getattr(route.verifier, "manifest", None)
        assert settings.verifier is not None
        try:
            key = (file_sha256(data), getattr(route.verifier, "sha256", None))
            cached = self._cache.get((name, "evaluation"))
            if cached is not None and cached.key == key:
                return cached
            rows = calibration_rows(Path(settings.verifier),
                                    manifest if isinstance(manifest, Mapping) else {}, data)
        except (VerifierError, OSError) as exc:
            return ScoredRows((), [], [], [], note=f"evaluation data {data}: {exc}")
        large = [bool(x) for x in rows.large]
        if rows.scores is not None:  # a refitted verifier's own training file: its stored
            # cross-fitted scores (each row scored by a fold model that never saw it)
            scored = ScoredRows(key, [float(x) for x in rows.scores],
                                [bool(x) for x in rows.small], large)
            self._cache[(name, "evaluation")] = scored
            return scored
        if not rows.examples:
            return ScoredRows((), [], [], [], note=f"evaluation data {data}: no rows")
        return self._cached(name, "evaluation", key, rows.examples, large, route.verifier)

    def _live_rows(self, name: str, route: Route, settings: RouteSettings) -> ScoredRows:
        from canary.shadow import ShadowLog
        from gateway.evals.graders import get_grader
        from gateway.verifier_data import shadow_rows

        try:
            pairs = [p for p in ShadowLog(self.shadow.dir).read()
                     if p.relation == "tier" and p.route == name]
        except OSError as exc:
            return ScoredRows((), [], [], [], note=f"the shadow log is not readable: {exc}")
        examples = shadow_rows(pairs, route.small, route.large, get_grader({"type": "exact"}))
        if not examples:
            return ScoredRows((), [], [], [], note=(
                f"no live pairs of route {name} in the shadow log ({self.shadow.dir}): mirror "
                f"a share of its requests to its other tier ([shadow.mirrors])"))
        key = (len(pairs), pairs[-1].at, getattr(route.verifier, "sha256", None))
        return self._cached(name, "live", key, examples, [True] * len(examples), route.verifier)
