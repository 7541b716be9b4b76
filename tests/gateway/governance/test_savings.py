"""The savings figures from a real record store: totals are the sums over the records (old
records without costs included), counterfactuals follow the documented rule, and the quality a
route keeps comes from shadow pairs and graded task items."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from canary.runs import CanaryRun, SliceFigures
from canary.settings import CanarySettings, ShadowSettings
from gateway.backends.settings import HTTPModelSettings
from gateway.evals.tasksets import TaskItem
from gateway.governance.savings import RouteTiers, SavingsTally, collect_savings
from gateway.kernel.generation import Timing
from gateway.models.cost import PriceBook
from gateway.records.builder import TupleCache, build_record
from gateway.records.chain import Signer
from gateway.records.sinks import create_sink
from router.decision import Decision
from router.settings import RouteSettings
from tests.gateway.records.conftest import LARGE as LARGE_TUPLE
from tests.gateway.records.conftest import answered, pending, sqlite_settings

SMALL = {"kind": "tokens", "input_usd_per_mtok": 1.0, "output_usd_per_mtok": 2.0}
LARGE = {"kind": "serving-time", "usd_per_hour": 36.0}  # a cent a second


class Deployment:
    """What the savings figures read of the settings: two priced models and a route."""

    def __init__(self, tmp_path: Path) -> None:
        self.models = {name: HTTPModelSettings.model_validate({"base_url": "http://up/v1",
                                                               "cost": cost})
                       for name, cost in (("small", SMALL), ("large", LARGE))}
        self.routes = {"auto": RouteSettings(mode="fixed", small="small", large="large")}
        self.shadow = ShadowSettings(dir=tmp_path / "shadow")
        self.canary = CanarySettings(dir=tmp_path / "canary")


def escalation(escalated: bool) -> Decision:
    return Decision(route="auto", mode="cascade", tier="large" if escalated else "small",
                    model="large" if escalated else "small", escalated=escalated)


def records(prices: PriceBook) -> list[dict[str, Any]]:
    """Three requests to route ``auto`` (one escalated), one to ``small`` directly, and one
    written before costs were recorded."""
    built = []
    for i, (route, decision) in enumerate([("auto", escalation(False)),
                                           ("auto", escalation(True)),
                                           ("auto", escalation(False)), ("small", None),
                                           ("small", None)]):
        done = answered(f"question {i}", route=route, decision=decision)
        for result in done.results:
            result.timing = Timing(started_at=1.0, total_s=0.5 if result.model.name == "large"
                                   else 0.1)
        if i < 4:
            done.costs = [prices.call(r) for r in done.results]
        built.append(build_record(done, TupleCache()))
    return built


@pytest.mark.asyncio
async def test_the_totals_are_the_sums_over_the_records(tmp_path: Path) -> None:
    deployment = Deployment(tmp_path)
    built = records(PriceBook(deployment.models))
    sink = create_sink(sqlite_settings(tmp_path))
    await sink.open()
    try:
        await sink.append("main", [pending(r) for r in built], Signer(None), 1000)
        figures = await collect_savings(deployment, sink, None, 2e9)
    finally:
        await sink.aclose()
    calls = [c for r in built for c in r["calls"]]
    assert "cost" not in built[-1]["calls"][0]  # the old record: no cost, not a null one
    assert figures["totals"]["requests"] == len(built) == 5
    assert figures["totals"]["calls"] == len(calls) == 6
    assert figures["totals"]["actual_usd"] == pytest.approx(
        sum(c["cost"]["usd"] for c in calls if "cost" in c), rel=1e-12)
    auto, small = figures["routes"]["auto"], figures["routes"]["small"]
    assert auto["actual_usd"] + small["actual_usd"] == pytest.approx(
        figures["totals"]["actual_usd"], rel=1e-12)
    assert (auto["requests"], auto["escalated"], auto["escalation_share"]) == (3, 1, 1 / 3)
    assert small["unpriced_calls"] == 1 and small["always_large_usd"] is None
    # each call: 5 prompt and 3 completion tokens
    small_call = (5 * 1.0 + 3 * 2.0) / 1e6
    large_call = 0.5 * 36.0 / 3600
    assert auto["actual_usd"] == pytest.approx(3 * small_call + large_call)
    assert auto["always_small_usd"] == pytest.approx(3 * small_call)
    # the two requests the large model did not answer: their tokens at its observed seconds per
    # completion token (its one call: 0.5 s for 3 tokens)
    assert auto["always_large_usd"] == pytest.approx(3 * large_call)
    assert auto["saved_usd"] == pytest.approx(auto["always_large_usd"] - auto["actual_usd"])
    series = [p for p in figures["series"] if p["route"] == "auto"]
    assert sum(p["actual_usd"] for p in series) == pytest.approx(auto["actual_usd"])


def test_quality_kept_from_shadow_agreement_and_graded_items() -> None:
    item = TaskItem(id="q1", kind="chat", messages=({"role": "user", "content": "question 1"},),
                    answer="answer to question 1", grader={"type": "exact"}, slice="s",
                    max_tokens=8)
    wrong = TaskItem(id="q0", kind="chat", messages=({"role": "user", "content": "question 0"},),
                     answer="something else", grader={"type": "exact"}, slice="s",
                     max_tokens=8)
    tally = SavingsTally({}, {"auto": RouteTiers("cascade", "small", "large")},
                         items=[item, wrong])
    for i, escalated in ((0, False), (1, True)):
        tally.record(build_record(answered(f"question {i}", route="auto",
                                           decision=escalation(escalated)), TupleCache()))
    cut = answered("question 1", route="auto", decision=escalation(False))
    cut.status, cut.results[0].choices[0].text = 499, "answer to qu"  # a stream cut short
    tally.record(build_record(cut, TupleCache()))  # costs, but is not graded
    direct = answered("question 0", route="large")
    direct.results[0].model = LARGE_TUPLE  # asked directly: the large model answers
    tally.record(build_record(direct, TupleCache()))
    for agree in (True, True, False, True):
        tally.shadow_pair("auto", "small", "large", agree)
    tally.shadow_pair("auto", "large", "small", False)  # not a small answer checked: ignored
    quality = tally.result()["routes"]["auto"]["quality"]
    assert quality["shadow"]["mirrored"] == 4 and quality["shadow"]["agreement"] == 0.75
    assert quality["shadow"]["kept"] == pytest.approx(1 / 3 + 2 / 3 * 0.75)  # 1 of 3 escalated
    graded = quality["graded"]["ALL"]
    # the route: right on q1 (escalated), wrong on q0; the large model: right on q1 (its
    # escalated call), wrong on q0 (asked directly)
    assert (graded["items"], graded["accuracy"], graded["compared"]) == (2, 0.5, 2)
    assert graded["large_accuracy"] == 0.5 and graded["kept"] == 1.0
    assert quality["canary"] is None  # no canary run of either tier


def figures(items: int, pass_rate: float) -> SliceFigures:
    return SliceFigures(items=items, pass_rate=pass_rate, golden_pass_rate=pass_rate,
                        agreement=1.0, diverged=0, mean_first_divergence=None,
                        logprob_shift=None, logprob_abs_shift=None, latency_p50_ms=1.0,
                        latency_p99_ms=1.0, prompt_tokens=1, completion_tokens=1, errors=0)


def canary_run(model: str, at: float, rates: dict[str, float]) -> CanaryRun:
    return CanaryRun(id=f"run-{model}-{at}", model=model, started_at=at, wall_s=1.0,
                     pin_version=1, set_sha256="s", pinned_digest="d", served_digest="d",
                     items=[], slices={name: figures(10, r) for name, r in rates.items()},
                     overall=figures(10 * len(rates), sum(rates.values()) / len(rates)))


def test_quality_names_each_tiers_latest_canary_run() -> None:
    tally = SavingsTally({}, {"auto": RouteTiers("cascade", "small", "large")})
    tally.record(build_record(answered("question", route="auto", decision=escalation(False)),
                              TupleCache()))
    tally.canary_run(canary_run("large", 20.0, {"add": 0.9, "sort": 1.0}))
    tally.canary_run(canary_run("large", 10.0, {"add": 0.1, "sort": 0.1}))  # older: not shown
    tally.canary_run(canary_run("other", 30.0, {"add": 0.5}))
    canary = tally.result()["routes"]["auto"]["quality"]["canary"]
    assert canary["small"] is None
    assert canary["large"]["started_at"] == 20.0
    assert canary["large"]["slices"] == {"add": 0.9, "sort": 1.0}
    assert canary["large"]["pass_rate"] == pytest.approx(0.95)
