"""Escalation drift: a route's live decisions against its calibration, alerting through the
canary sinks. The small model changes how it ends its answers mid-run: a verifier that keys on
one ending (the first answer feature set) escalates far more and is caught; the robust one
keeps its share and raises nothing. End to end: a real gateway reports the alert in /metrics."""

from __future__ import annotations

import asyncio
import random
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from threadpoolctl import threadpool_limits  # type: ignore[import-untyped, unused-ignore]

from canary.alerts import Alert, AlertSink
from canary.escalation import DriftExpectation, EscalationDrift
from router.calibration import CostModel, operating_points, suggest
from router.decision import Decision
from tests.canary.test_monitor import metric
from tests.conftest import GatewayFactory, ServerProcess, upstream_model
from tests.router.test_routing import ask, manifest_sha256, training_rows
from verifiers.answers import rewrite_final
from verifiers.data import Answer, Example, VerifierInput
from verifiers.routellm import load_routellm
from verifiers.scoring import Verifier
from verifiers.spec import preset
from verifiers.training import fit, train_artifact

ROUTELLM = Path(__file__).resolve().parents[2] / "benchmarks" / "data" / "routellm"


class Capture(AlertSink):
    name = "capture"

    def __init__(self) -> None:
        self.alerts: list[Alert] = []

    async def send(self, alert: Alert) -> None:
        self.alerts.append(alert)


def decision(score: float, threshold: float, route: str = "auto") -> Decision:
    escalated = score >= threshold
    return Decision(route=route, mode="cascade", tier="large" if escalated else "small",
                    model="large" if escalated else "small", score=score, threshold=threshold,
                    escalated=escalated)


@pytest.fixture(scope="module")
def gsm8k() -> tuple[list[Example], list[Example]]:
    return load_routellm(ROUTELLM, "gsm8k").split()


def items(rows: list[Example], style: str | None) -> list[VerifierInput]:
    out = []
    for row in rows:
        item = replace(row.input, slice=None)
        assert item.answer is not None
        if style is not None:
            text = rewrite_final(item.answer.text, style) or item.answer.text
            item = replace(item, answer=Answer(text))
        out.append(item)
    return out


def run_mid_run_change(verifier: Verifier, gsm8k: tuple[list[Example], list[Example]]
                       ) -> tuple[list[Alert], int, float]:
    """Calibrate for 40 % on the validation split; then 300 live decisions on unseen answers
    as the model wrote them, and 300 more after it starts ending them with "Final answer: N".
    Returns the alerts, how many came in the first phase, and the second phase's share."""
    train, validation = gsm8k
    scores = verifier.score_batch(items(validation, None))
    small = [e.small_correct for e in validation]
    large = [bool(e.large_correct) for e in validation]
    points = operating_points(scores, small, large, CostModel("cascade", 10.0), (-1.0, 1.0))
    chosen = suggest(points, escalation=0.4)
    median = min(points, key=lambda p: abs(p.share - 0.5))
    sink = Capture()

    async def live() -> tuple[int, float]:
        drift = EscalationDrift(
            {"auto": DriftExpectation(chosen.threshold, chosen.share, median.threshold)}, [sink])
        unseen = train[300:600]
        for score in verifier.score_batch(items(unseen, None)):
            drift.observe(decision(float(score), chosen.threshold))
        first = len(drift.alerts)
        changed = verifier.score_batch(items(unseen, "final-answer"))
        for score in changed:
            drift.observe(decision(float(score), chosen.threshold))
        await asyncio.sleep(0)  # let the sinks run
        await asyncio.gather(*drift._sending)
        return first, float(np.mean(changed >= chosen.threshold))

    first, share = asyncio.run(live())
    return sink.alerts, first, share


def test_a_verifier_keyed_on_one_ending_is_caught(
        gsm8k: tuple[list[Example], list[Example]]) -> None:
    spec = preset("answer")
    legacy = replace(spec, extractors=tuple((name, {}) for name, _ in spec.extractors),
                     answer_formats=0)
    with threadpool_limits(limits=1):
        verifier = fit(gsm8k[0][:300], legacy)
        alerts, first, share = run_mid_run_change(verifier, gsm8k)
    assert first == 0, "no alarm while the answers look like the calibration rows"
    assert share > 0.8  # "Final answer: N" read as truncated: nearly everything escalated
    assert alerts and alerts[0].kind == "drift" and alerts[0].source == "escalation"
    assert alerts[0].model == "auto" and "calibrated for" in alerts[0].summary
    assert {s["stream"] for s in alerts[0].streams} & {"escalation-up", "score-up"}


def test_the_robust_verifier_raises_nothing(gsm8k: tuple[list[Example], list[Example]]) -> None:
    with threadpool_limits(limits=1):
        verifier = fit(gsm8k[0][:300], preset("answer"))
        alerts, _, share = run_mid_run_change(verifier, gsm8k)
    assert alerts == [] and share < 0.55


def test_false_alarms_are_rare_and_a_shift_is_found() -> None:
    rng = random.Random(5)
    # calibrated: scores uniform in [0, 1], threshold 0.6 escalates 40 %, median 0.5
    drift = EscalationDrift({"r": DriftExpectation(0.6, 0.4, 0.5)}, [])
    for _ in range(20_000):
        drift.observe(decision(rng.random(), 0.6, "r"))
    assert drift.alerts == []
    seen = 0
    while not drift.alerts and seen < 3000:  # scores rise: ~55 % escalated, ~65 % above 0.5
        seen += 1
        drift.observe(decision(rng.uniform(0.15, 1.0) ** 0.9, 0.6, "r"))
    assert drift.alerts and seen < 1000


def test_a_threshold_changed_live_is_not_drift() -> None:
    drift = EscalationDrift({"r": DriftExpectation(0.5, 0.4)}, [], shift=0.3,
                            false_alarm_every=1000)
    for _ in range(500):  # an operator lowered the threshold: everything escalates, by design
        drift.observe(decision(0.2, 0.1, "r"))
    assert drift.alerts == []
    for _ in range(20):  # back at the calibrated threshold, everything escalates: drift
        drift.observe(decision(0.9, 0.5, "r"))
    assert len(drift.alerts) == 1  # after ~15 decisions (h = log(4000), 0.4 -> 0.7)
    # the decisions at the other threshold never counted: the share is of the 15 at 0.5
    assert "escalated 100.0% of the last 15 decisions" in drift.alerts[0].summary
    assert drift.watches["r"].decisions == 5  # counted again since the alarm
    assert drift.gauges()["share"] == {"r": 1.0} and drift.gauges()["expected"] == {"r": 0.4}


@pytest.fixture(scope="module")
def cascade_verifier(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import orjson

    base = tmp_path_factory.mktemp("drift")
    data = base / "answer.jsonl"
    data.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in training_rows("answer")))
    train_artifact(data, "answer", base / "answer", target="small-wrong")
    return base / "answer"


def test_gateway_alerts_on_escalation_drift(gateway_factory: GatewayFactory,
                                            upstream: ServerProcess,
                                            cascade_verifier: Path) -> None:
    sections: dict[str, dict[str, Any]] = {
        "models.small": upstream_model(upstream, "echo"),
        "models.large": upstream_model(upstream, "echo"),
        "routes.cascade": {"mode": "cascade", "small": "small", "large": "large",
                           "verifier": str(cascade_verifier), "threshold": 0.5,
                           "verifier_sha256": manifest_sha256(cascade_verifier),
                           "expected_escalation": 0.5, "expected_score_median": 0.5},
        "canary": {"alert_sinks": ["log", "metric"], "escalation_shift": 0.3,
                   "escalation_false_alarm_every": 1000},
    }
    gateway = gateway_factory(sections)
    labels = '{model="cascade",kind="drift",source="escalation"}'
    for i in range(40):  # as calibrated: half the answers need the large model
        prompt = f"{'hard puzzle' if i % 2 else 'easy sum'} number {i}"
        assert ask(gateway, "cascade", prompt).status_code == 200
    assert labels not in metric(gateway, "tiergate_canary_alerts_total")
    assert metric(gateway, "tiergate_route_escalation_share")['{route="cascade"}'] == 0.5
    for i in range(40):  # the small model's answers change: every one is escalated now
        assert ask(gateway, "cascade", f"hard puzzle number {100 + i}").status_code == 200
    alerts = metric(gateway, "tiergate_canary_alerts_total")
    assert alerts.get(labels, 0) >= 1
    assert metric(gateway, "tiergate_route_escalation_expected") == {'{route="cascade"}': 0.5}
    evidence = httpx.get(gateway.url + "/metrics").text
    assert 'tiergate_route_drift_evidence{route="cascade"}' in evidence
