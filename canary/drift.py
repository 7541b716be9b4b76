"""Drift decisions: sequential tests on Bernoulli streams, with a stated false-alarm rate.

Every canary observation is a success or a failure of one *stream* of a pinned model:

- ``pass/<slice>`` and ``pass/all``: did the item pass its grader? H0: the pass rate is at least
  the golden one, ``p >= p0``; H1: it dropped by ``pass_rate_drop``, ``p = p0 - δ``.
- ``agreement``: are the item's token ids the golden ones? H0: ``p >= 1 - agreement_tolerance``;
  H1: ``p = 1 - agreement_alternative``. A deterministic engine agrees on every item, so a few
  disagreements are already strong evidence (a silent weight swap disagrees almost everywhere).
- ``shadow``: did a mirrored live request get the same tokens from the pinned version? Same
  hypotheses as ``agreement``; fed by the gateway's shadow mirroring in batches.

Each observation adds its log-likelihood ratio ``log(P1(x) / P0(x))`` to the stream's statistic;
an alarm is raised when the statistic reaches ``h = log(K / alpha)`` (K: the model's streams,
alpha: the ``false_alarm_rate``). Observations arrive in *batches* (one canary run, one shadow
batch); the statistic is checked after every observation. The test is chosen by name from
:data:`DRIFT_TESTS`:

``cusum`` (default; Page's CUSUM with restarts at batch boundaries)
    After each batch the statistic is floored at 0: evidence for "no drift" never piles up, so a
    drift that starts after months of quiet is found as fast as on day one. An alarm needs some
    batch boundary ``j`` from which the product of likelihood ratios reaches ``e^h``; under H0
    that product is a non-negative martingale with mean 1, so by Ville's inequality each start
    crosses with probability at most ``e^-h = alpha / K``. Hence **expected false alarms per model
    per batch (canary run) <= alpha** (union over the K streams). Expected detection delay
    ≈ ``(h + overshoot) / KL(p1 || p0)`` observations of the drifted stream (Lorden).
``sprt``
    Wald's SPRT without a lower (accept) boundary: one start, never floored. By Ville's
    inequality **P(any false alarm before the next ack or repin) <= alpha**: the stronger guarantee,
    but evidence for H0 accumulates (at ``KL(p0 || p1)`` per observation), so a drift late in a
    pin's life takes correspondingly longer to detect. Meant for short checks (after a deploy).

Both guarantees hold for any ``p >= p0`` (the likelihood ratio is then a supermartingale) and
for any order of observations; they do not need observations to be independent across items,
only that each observation's probability of success is at least ``p0`` given the past.

State (:class:`DriftState`) is plain data: it is stored with the model's canary state, carried
across runs and shadow batches, and reset on ack or repin.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

StreamKind = Literal["pass", "agreement", "shadow"]
P_MAX = 0.99
"""A golden pass rate of 100 % is taken as 99 %: a failure must stay possible under H0."""
P_MIN = 0.01
"""H1 must keep some successes possible: a slice whose golden rate is within this of the drop
(``p0 - δ < P_MIN``, e.g. a slice every golden output fails) has no pass-rate test."""


class DriftTest(ABC):
    """A sequential test over the log-likelihood ratios of one stream."""

    name: ClassVar[str]
    guarantee: ClassVar[str]

    def threshold(self, alpha: float, streams: int) -> float:
        """``h = log(K / alpha)``: each stream gets ``alpha / K`` of the false-alarm budget."""
        return math.log(max(streams, 1) / alpha)

    def step(self, statistic: float, llr: float) -> float:
        return statistic + llr

    @abstractmethod
    def end_batch(self, statistic: float) -> float:
        """The statistic carried into the next batch."""


class CusumTest(DriftTest):
    name = "cusum"
    guarantee = "expected false alarms per model per canary run <= false_alarm_rate"

    def end_batch(self, statistic: float) -> float:
        return max(0.0, statistic)


class SprtTest(DriftTest):
    name = "sprt"
    guarantee = "P(any false alarm before the next ack or repin) <= false_alarm_rate"

    def end_batch(self, statistic: float) -> float:
        return statistic


DRIFT_TESTS: Mapping[str, type[DriftTest]] = MappingProxyType(
    {"cusum": CusumTest, "sprt": SprtTest})
"""The registry: drift-test name → class."""


def get_test(name: str) -> DriftTest:
    cls = DRIFT_TESTS.get(name)
    if cls is None:
        raise ValueError(f"unknown drift test {name!r}; known: {', '.join(DRIFT_TESTS)}")
    return cls()


def kl_bernoulli(p: float, q: float) -> float:
    """KL(Bernoulli(p) || Bernoulli(q)) in nats."""
    total = 0.0
    if p > 0:
        total += p * math.log(p / q)
    if p < 1:
        total += (1 - p) * math.log((1 - p) / (1 - q))
    return total


class DriftConfig(BaseModel):
    """The drift parameters of a model (from ``[canary]``), frozen into its state at pin time."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    test: str = "cusum"
    false_alarm_rate: float = Field(default=0.01, gt=0, lt=1)
    pass_rate_drop: float = Field(default=0.2, gt=0, lt=1)
    agreement_tolerance: float = Field(default=0.01, gt=0, lt=1)
    agreement_alternative: float = Field(default=0.2, gt=0, lt=1)


class StreamAlarm(BaseModel):
    """A stream's statistic reached the threshold."""

    model_config = ConfigDict(extra="forbid")

    stream: str
    slice: str | None
    kind: StreamKind
    statistic: float
    threshold: float
    raised_at: float
    observation: int
    """The stream's observation count when it crossed (1-based, since the last reset)."""
    evidence: str


class StreamState(BaseModel):
    """One Bernoulli stream: its hypotheses and its evidence so far."""

    model_config = ConfigDict(extra="forbid")

    name: str
    slice: str | None = None
    kind: StreamKind
    p0: float
    """H0: success probability >= p0."""
    p1: float
    """H1: success probability = p1 (< p0)."""
    statistic: float = 0.0
    peak: float = 0.0
    """The highest statistic since the last reset."""
    observations: int = 0
    failures: int = 0
    batches: int = 0
    last_batch: tuple[int, int] = (0, 0)
    """(observations, failures) of the latest batch."""
    alarm: StreamAlarm | None = None

    @property
    def llr_success(self) -> float:
        return math.log(self.p1 / self.p0)

    @property
    def llr_failure(self) -> float:
        return math.log((1 - self.p1) / (1 - self.p0))

    def expected_delay(self, threshold: float) -> float:
        """Observations to reach ``threshold`` at the H1 rate, on average (Wald's approximation,
        overshoot ignored)."""
        return threshold / kl_bernoulli(self.p1, self.p0)


class DriftState(BaseModel):
    """Everything the drift tests of one pinned model know. Plain data, stored as JSON."""

    model_config = ConfigDict(extra="forbid")

    config: DriftConfig
    threshold: float
    streams: dict[str, StreamState]

    @property
    def alarms(self) -> list[StreamAlarm]:
        return [s.alarm for s in self.streams.values() if s.alarm is not None]

    @property
    def drifted(self) -> bool:
        return any(s.alarm is not None for s in self.streams.values())

    def observe(self, stream: str, outcomes: Sequence[bool], now: float) -> StreamAlarm | None:
        """Add one batch of observations (True: success) to ``stream``.

        Returns the stream's alarm if this batch raised it (an alarm stands until :meth:`reset`;
        the statistic keeps moving for the reports). Unknown streams are ignored (None), e.g. a
        slice whose golden rate leaves no room for a pass-rate test.
        """
        state = self.streams.get(stream)
        if state is None or not outcomes:
            return None
        test = get_test(self.config.test)
        success, failure = state.llr_success, state.llr_failure
        statistic, peak, count = state.statistic, state.peak, state.observations
        crossed: tuple[int, float] | None = None
        for outcome in outcomes:
            count += 1
            statistic = test.step(statistic, success if outcome else failure)
            peak = max(peak, statistic)
            if crossed is None and statistic >= self.threshold:
                crossed = (count, statistic)
        raised: StreamAlarm | None = None
        failures = len(outcomes) - sum(bool(o) for o in outcomes)
        state.observations, state.peak = count, peak
        state.failures += failures
        state.batches += 1
        state.last_batch = (len(outcomes), failures)
        state.statistic = test.end_batch(statistic)
        if crossed is not None and state.alarm is None:
            raised = state.alarm = StreamAlarm(
                stream=state.name, slice=state.slice, kind=state.kind, statistic=crossed[1],
                threshold=self.threshold, raised_at=now, observation=crossed[0],
                evidence=describe(state, self.threshold, crossed[1]))
        return raised

    def reset(self) -> None:
        """Forget all evidence (on ack or repin): every stream starts again from 0."""
        for state in self.streams.values():
            state.statistic = state.peak = 0.0
            state.observations = state.failures = state.batches = 0
            state.last_batch = (0, 0)
            state.alarm = None


def describe(state: StreamState, threshold: float, statistic: float) -> str:
    """One line of evidence for an alarm, for people."""
    seen, failed = state.last_batch
    what = {"pass": "failed their grader", "agreement": "differed from the golden tokens",
            "shadow": "differed from the pinned version"}[state.kind]
    h0 = (f"pass rate >= {state.p0:.0%}" if state.kind == "pass"
          else f"<= {1 - state.p0:.0%} differ")
    return (f"{state.name}: {failed} of {seen} {what} in the last batch "
            f"({state.failures} of {state.observations} since reset, H0 {h0}), "
            f"log-LR {statistic:.2f} >= {threshold:.2f}")


def plan_streams(golden: Mapping[str, tuple[int, int]], config: DriftConfig) -> DriftState:
    """The streams of a model pinned with ``golden`` = slice → (passed, items) of its golden
    outputs: a pass-rate stream per slice that can show the configured drop, one over all items,
    the agreement stream and the shadow stream; thresholds from the false-alarm budget."""
    delta = config.pass_rate_drop
    streams: list[StreamState] = []

    def pass_stream(name: str, slice_name: str | None, passed: int, items: int) -> None:
        p0 = min(passed / items, P_MAX) if items else 0.0
        if p0 - delta >= P_MIN:
            streams.append(StreamState(name=name, slice=slice_name, kind="pass", p0=p0,
                                       p1=p0 - delta))

    for slice_name, (passed, items) in golden.items():
        pass_stream(f"pass/{slice_name}", slice_name, passed, items)
    total = sum(items for _, items in golden.values())
    pass_stream("pass/all", None, sum(passed for passed, _ in golden.values()), total)
    agree0, agree1 = 1 - config.agreement_tolerance, 1 - config.agreement_alternative
    streams.append(StreamState(name="agreement", kind="agreement", p0=agree0, p1=agree1))
    streams.append(StreamState(name="shadow", kind="shadow", p0=agree0, p1=agree1))
    threshold = get_test(config.test).threshold(config.false_alarm_rate, len(streams))
    return DriftState(config=config, threshold=threshold,
                      streams={s.name: s for s in streams})
