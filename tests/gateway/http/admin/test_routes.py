"""``GET /admin/routes`` and ``GET /admin/routes/{route}/curve``: the shipped route ``auto``
with its shipped held-out pairs, and live pairs mirrored through a real gateway."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from canary.shadow import ShadowLog
from gateway.evals.graders import get_grader
from gateway.verifier_data import shadow_rows
from router.calibration import CostModel, measure, operating_points
from tests.gateway.http.admin.conftest import ADMIN, TIERS, Admin, reference_settings, serve
from verifiers.artifact import load_artifact
from verifiers.data import VerifierInput, read_examples

module_loop = pytest.mark.asyncio(loop_scope="module")
HANG_S = 120.0
PROMPTS = [f"rev({a}+{b})=" for a, b in ((0, 3), (12, 9), (47, 85), (5, 5), (31, 70), (8, 64))]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def admin(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Admin]:
    async with serve(reference_settings(tmp_path_factory.mktemp("admin-routes"))) as served:
        yield served


@module_loop
async def test_routes_list_the_shipped_route(admin: Admin) -> None:
    answer = (await admin.client.get("/admin/routes", headers=ADMIN)).json()
    assert answer["object"] == "list"
    [auto] = answer["data"]
    assert auto == {"route": "auto", "mode": "cascade", "small": TIERS[0], "large": TIERS[1],
                    "threshold": 0.094, "range": [-1.0, 1.0], "shared": False,
                    "connected": None, "expected_escalation": None, "evaluation": True}
    assert (await admin.client.get("/admin/routes")).status_code == 401


@module_loop
async def test_evaluation_curve_scores_the_shipped_heldout_pairs_as_the_router(
        admin: Admin) -> None:
    answer = (await admin.client.get("/admin/routes/auto/curve", headers=ADMIN,
                                     params={"source": "evaluation"})).json()
    settings = admin.state.settings.routes["auto"]
    assert settings.evaluation_data is not None and settings.verifier is not None
    rows = read_examples(settings.evaluation_data).examples
    verifier = load_artifact(settings.verifier)
    scores = [verifier.score(VerifierInput(r.prompt, r.small, None)) for r in rows]
    small = [r.small_correct for r in rows]
    large = [bool(r.large_correct) for r in rows]
    cost = CostModel("cascade", 10.0)
    expected = measure(scores, small, large, 0.094, cost)
    assert answer["rows"] == len(rows) == 450 and answer["note"] is None
    assert answer["threshold"] == 0.094
    assert answer["current"] == {"threshold": 0.094, "escalation": expected.share,
                                 "accuracy": expected.accuracy, "cost": expected.cost}
    assert answer["acc_small"] == pytest.approx(sum(small) / 450)
    assert answer["acc_large"] == pytest.approx(sum(large) / 450)
    points = operating_points(scores, small, large, cost, (-1.0, 1.0))
    assert len(answer["points"]) == len(points)
    shares = [p["escalation"] for p in answer["points"]]
    assert shares == sorted(shares) and shares[0] == 0.0 and shares[-1] == 1.0
    assert answer["points"][-1]["accuracy"] == pytest.approx(sum(large) / 450)
    assert "relative to always-large" in answer["cost_unit"]
    # Moving the threshold needs no rescoring: the current point follows at once.
    put = await admin.client.put("/admin/routes/auto/threshold", headers=ADMIN,
                                 json={"threshold": 0.5})
    assert put.status_code == 200, put.text
    moved = (await admin.client.get("/admin/routes/auto/curve", headers=ADMIN)).json()
    at_half = measure(scores, small, large, 0.5, cost)
    assert moved["current"]["escalation"] == at_half.share < expected.share
    assert moved["points"] == answer["points"]
    await admin.client.put("/admin/routes/auto/threshold", headers=ADMIN,
                           json={"threshold": 0.094})


@module_loop
async def test_curve_errors(admin: Admin) -> None:
    missing = await admin.client.get("/admin/routes/nope/curve", headers=ADMIN)
    assert missing.status_code == 404 and missing.json()["error"]["type"]
    bad = await admin.client.get("/admin/routes/auto/curve", headers=ADMIN,
                                 params={"source": "guess"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "source"


@module_loop
async def test_live_curve_from_pairs_mirrored_through_the_gateway(admin: Admin) -> None:
    empty = (await admin.client.get("/admin/routes/auto/curve", headers=ADMIN,
                                    params={"source": "live"})).json()
    assert empty["rows"] == 0 and empty["points"] == [] and empty["current"] is None
    assert "no live pairs" in empty["note"]
    for prompt in PROMPTS:
        # its own task, as a server runs each request: the mirror queues a request when the
        # task that served it is done
        response = await asyncio.create_task(admin.client.post("/v1/completions", json={
            "model": "auto", "prompt": prompt, "max_tokens": 3, "temperature": 0}))
        assert response.status_code == 200, response.text
    log = ShadowLog(admin.state.settings.shadow.dir)
    deadline = time.monotonic() + HANG_S
    # each request the small tier answered is mirrored to the large one
    while len(list(log.read())) < len(PROMPTS) - await _escalated(admin):
        assert time.monotonic() < deadline, "the mirror wrote no pairs"
        await asyncio.sleep(0.05)
    answer = (await admin.client.get("/admin/routes/auto/curve", headers=ADMIN,
                                     params={"source": "live"})).json()
    rows = shadow_rows(log.read(), *TIERS, get_grader({"type": "exact"}))
    verifier = load_artifact(Path(str(admin.state.settings.routes["auto"].verifier)))
    scores = [verifier.score(VerifierInput(r.prompt, r.small, None)) for r in rows]
    agree = [r.small_correct for r in rows]
    expected = measure(scores, agree, [True] * len(rows), 0.094, CostModel("cascade", 10.0))
    assert answer["rows"] == len(rows) > 0 and answer["note"] is None
    assert answer["acc_large"] == 1.0 and answer["acc_small"] == sum(agree) / len(rows)
    assert answer["current"]["accuracy"] == expected.accuracy
    assert answer["current"]["escalation"] == expected.share


async def _escalated(admin: Admin) -> int:
    """Requests of the route the large tier answered (not mirrored: the mirror is small's)."""
    recorder = admin.state.recorder
    assert recorder is not None and await recorder.flush()
    found = (await admin.client.get("/admin/records", headers=ADMIN,
                                    params={"route": "auto", "escalated": "true"})).json()
    return len(found["data"])
