"""The drift tests by simulation: false alarms at most at the configured rate without drift, and
the power the SRE guide states (a 90 % → 70 % pass-rate drop found within 100 canary prompts).

Every simulation is seeded, so each assertion is deterministic; the margins are stated where
they are used.
"""

from __future__ import annotations

import math
import random

import pytest

from canary.drift import DRIFT_TESTS, DriftConfig, DriftState, get_test, kl_bernoulli, plan_streams

# A 100-item set: 10 slices of 10, golden pass rates from easy to tail.
GOLDEN = {f"s{i}": (passed, 10) for i, passed in enumerate([9, 9, 8, 8, 7, 7, 6, 5, 9, 8])}


def simulate_run(state: DriftState, rng: random.Random, rates: dict[str, float],
                 mismatch: float, now: float) -> bool:
    """One canary run: each item passes with its slice's rate and disagrees with the golden
    tokens with probability ``mismatch``. Returns whether any stream alarmed."""
    outcomes = {name: [rng.random() < rate for _ in range(GOLDEN[name][1])]
                for name, rate in rates.items()}
    alarms = [state.observe(f"pass/{name}", passed, now) for name, passed in outcomes.items()]
    alarms.append(state.observe("pass/all", [o for v in outcomes.values() for o in v], now))
    alarms.append(state.observe("agreement", [rng.random() >= mismatch for _ in range(100)], now))
    return any(a is not None for a in alarms)


def golden_rates() -> dict[str, float]:
    return {name: passed / items for name, (passed, items) in GOLDEN.items()}


def test_streams_and_threshold() -> None:
    state = plan_streams({"easy": (10, 10), "mid": (5, 10), "dead": (0, 10)}, DriftConfig())
    # "dead" has no room for a 0.2 drop: agreement covers it; K = easy, mid, all, agreement, shadow
    assert sorted(state.streams) == ["agreement", "pass/all", "pass/easy", "pass/mid", "shadow"]
    assert state.threshold == pytest.approx(math.log(5 / 0.01))
    easy = state.streams["pass/easy"]
    assert easy.p0 == 0.99 and easy.p1 == pytest.approx(0.79)  # 100 % golden taken as 99 %
    assert state.streams["agreement"].p0 == pytest.approx(0.99)
    with pytest.raises(ValueError, match="known: cusum, sprt"):
        get_test("ewma")
    assert set(DRIFT_TESTS) == {"cusum", "sprt"}


def test_no_drift_false_alarms_at_most_the_configured_rate() -> None:
    """200 canary runs without drift, at the worst case of H0 (pass rates exactly golden, items
    differing from golden tokens at exactly the tolerated 1 %): the default alpha = 0.01 bounds
    expected false alarms by 200 x 0.01 = 2; none is raised."""
    rng = random.Random(7)
    state = plan_streams(GOLDEN, DriftConfig())
    alarms = sum(simulate_run(state, rng, golden_rates(), 0.01, t) for t in range(200))
    assert alarms == 0


@pytest.mark.parametrize("test", ["cusum", "sprt"])
def test_false_alarm_rate_holds_when_it_is_large(test: str) -> None:
    """With alpha = 0.2 false alarms actually happen, so the bound is exercised, not vacuous:
    cusum: 200 runs (acknowledged after each alarm) raise at most 200 alpha = 40 in expectation;
    sprt: of 200 pins followed for 10 runs each, at most 200 alpha = 40 ever alarm. The assertion
    allows 3 standard deviations of a binomial(200, 0.2) above the bound (≤ 57)."""
    rng = random.Random(11)
    config = DriftConfig(test=test, false_alarm_rate=0.2)
    if test == "cusum":
        state = plan_streams(GOLDEN, config)
        alarms = 0
        for t in range(200):
            if simulate_run(state, rng, golden_rates(), 0.01, t):
                alarms += 1
                state.reset()
    else:
        alarms = 0
        for _ in range(200):
            state = plan_streams(GOLDEN, config)
            alarms += any(simulate_run(state, rng, golden_rates(), 0.01, t) for t in range(10))
    assert alarms <= 40 + 3 * math.sqrt(200 * 0.2 * 0.8)


def test_pass_rate_drop_90_to_70_found_within_100_prompts() -> None:
    """A 100-item set whose golden pass rate is 90 % in every slice: after 5 quiet runs the
    model drops to 70 %. In ≥ 90 % of 300 simulations the drop is detected within the drifted
    run (its 100 prompts), by the pass-rate tests alone (agreement is fed as unchanged)."""
    golden = {f"s{i}": (9, 10) for i in range(10)}
    detected = 0
    delays: list[int] = []
    rng = random.Random(3)
    for _ in range(300):
        state = plan_streams(golden, DriftConfig())
        for t in range(5):
            for name in golden:
                state.observe(f"pass/{name}", [rng.random() < 0.9 for _ in range(10)], t)
        before = state.streams["pass/all"].observations
        outcomes = {name: [rng.random() < 0.7 for _ in range(10)] for name in golden}
        for name, passed in outcomes.items():
            state.observe(f"pass/{name}", passed, 5)
        alarm = state.observe("pass/all", [o for v in outcomes.values() for o in v], 5)
        state.observe("agreement", [True] * 100, 5)
        if state.drifted:
            detected += 1
        if alarm is not None:
            delays.append(alarm.observation - before)
    assert detected / 300 >= 0.9
    # Wald's approximation of the mean delay, h / KL(p1 || p0), is ~47 prompts here.
    expected = plan_streams(golden, DriftConfig()).threshold / kl_bernoulli(0.7, 0.9)
    assert 30 < expected < 60
    assert sum(delays) / len(delays) < 100


def test_cusum_forgets_quiet_history_and_sprt_does_not() -> None:
    """After 50 quiet runs, CUSUM finds a collapse of agreement at once; the SPRT has banked
    50 runs of evidence for H0 and needs longer (the trade-off the guide documents)."""
    delays = {}
    for test in ("cusum", "sprt"):
        state = plan_streams(GOLDEN, DriftConfig(test=test))
        for t in range(50):
            state.observe("agreement", [True] * 100, t)
        runs = 0
        while not state.drifted:
            runs += 1
            state.observe("agreement", [i % 2 == 0 for i in range(100)], 50 + runs)
        delays[test] = runs
    assert delays["cusum"] == 1
    assert delays["sprt"] > 1


def test_alarm_evidence_and_reset() -> None:
    state = plan_streams({"a": (10, 10)}, DriftConfig())
    assert state.observe("agreement", [True] * 10, 1.0) is None
    alarm = state.observe("agreement", [False] * 5, 2.0)
    # h = log(4 streams / 0.01) = 5.99: two mismatches (2 x log 20 = 5.991) fall just short
    assert alarm is not None and alarm.observation == 13
    assert "5 of 5 differed" in alarm.evidence and alarm.raised_at == 2.0
    assert state.observe("agreement", [False] * 5, 3.0) is None  # stands, not raised again
    assert state.alarms == [alarm]
    state.reset()
    assert not state.drifted and state.streams["agreement"].statistic == 0.0
    assert state.observe("unknown", [False], 4.0) is None
    copy = DriftState.model_validate_json(state.model_dump_json())
    assert copy == state
