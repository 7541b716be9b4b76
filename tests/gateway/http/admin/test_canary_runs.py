"""``GET /admin/canary/{model}/runs``: the runs a real pin and real runs stored, newest first."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from tests.gateway.http.admin.conftest import ADMIN, Admin, reference_settings, serve

module_loop = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def admin(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Admin]:
    async with serve(reference_settings(tmp_path_factory.mktemp("admin-canary"),
                                        shadow={})) as served:
        yield served


@module_loop
async def test_runs_newest_first(admin: Admin) -> None:
    none = await admin.client.get("/admin/canary/ref-large/runs", headers=ADMIN)
    assert none.status_code == 200 and none.json() == {"object": "list", "data": []}
    pinned = await admin.client.post("/admin/canary/ref-large/pin", headers=ADMIN)
    assert pinned.status_code == 200, pinned.text
    made = []
    for _ in range(3):
        run = await admin.client.post("/admin/canary/ref-large/run", headers=ADMIN)
        assert run.status_code == 200, run.text
        made.append(run.json())
    listed = (await admin.client.get("/admin/canary/ref-large/runs", headers=ADMIN)).json()
    assert [r["id"] for r in listed["data"]] == [r["id"] for r in reversed(made)]
    newest = listed["data"][0]
    assert newest["started_at"] == made[-1]["started_at"]
    assert newest["slices"] == made[-1]["slices"] and newest["overall"] == made[-1]["overall"]
    assert newest["passed"] is (made[-1]["status"] == "ok" and not made[-1]["new_alarms"])
    assert "items" not in newest and "standing_alarms" in newest
    two = (await admin.client.get("/admin/canary/ref-large/runs", headers=ADMIN,
                                  params={"limit": 2, "items": "true"})).json()["data"]
    assert [r["id"] for r in two] == [made[2]["id"], made[1]["id"]]
    assert two[0]["items"] == made[2]["items"]


@module_loop
async def test_runs_errors(admin: Admin) -> None:
    unknown = await admin.client.get("/admin/canary/nope/runs", headers=ADMIN)
    assert unknown.status_code == 404
    for bad in ({"limit": 0}, {"limit": 501}, {"limit": "x"}, {"items": "maybe"}):
        reply = await admin.client.get("/admin/canary/ref-large/runs", headers=ADMIN,
                                       params=bad)
        assert reply.status_code == 400, bad
        assert reply.json()["error"]["param"] == next(iter(bad))
