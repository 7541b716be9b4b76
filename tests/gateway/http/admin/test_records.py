"""``POST /admin/records/{id}/replay``: a record made by a real request through the gateway
(the embedded reference models behind route ``auto``) replays to identical on the gateway's own
models."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from tests.gateway.http.admin.conftest import ADMIN, Admin, reference_settings, serve

module_loop = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def admin(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Admin]:
    async with serve(reference_settings(tmp_path_factory.mktemp("admin-records"),
                                        shadow={})) as served:
        yield served


async def recorded(admin: Admin, body: dict[str, object]) -> str:
    response = await asyncio.create_task(admin.client.post("/v1/completions", json=body))
    assert response.status_code == 200, response.text
    recorder = admin.state.recorder
    assert recorder is not None and await recorder.flush()
    return str(response.headers["x-tiergate-record-id"])


@module_loop
async def test_a_routed_record_replays_identical(admin: Admin) -> None:
    record_id = await recorded(admin, {"model": "auto", "prompt": "rev(47+85)=", "max_tokens": 3,
                                       "temperature": 0.8, "seed": 7})
    reply = await admin.client.post(f"/admin/records/{record_id}/replay", headers=ADMIN)
    assert reply.status_code == 200, reply.text
    report = reply.json()
    assert report["record_id"] == record_id and report["status"] == "identical", report
    assert report["chain"]["ok"] is True
    assert report["calls"] and all(c["status"] == "identical" for c in report["calls"])
    choice = report["calls"][0]["choices"][0]
    assert choice["compared"] == "token_ids" and choice["recorded_length"] > 0


@module_loop
async def test_replay_errors(admin: Admin) -> None:
    missing = await admin.client.post("/admin/records/nope/replay", headers=ADMIN)
    assert missing.status_code == 404 and "nope" in missing.json()["error"]["message"]
    assert (await admin.client.post("/admin/records/nope/replay")).status_code == 401


@module_loop
async def test_a_record_of_another_tuple_is_refused_with_200(admin: Admin) -> None:
    """The record names a tuple this gateway no longer serves (its weights sha256 changed):
    refused, said why, answered 200."""
    record_id = await recorded(admin, {"model": "ref-large", "prompt": "rev(1+2)=",
                                       "max_tokens": 2, "temperature": 0})
    backend = admin.state.registry.get("ref-large")
    original = backend.describe

    def changed() -> object:
        described = original()
        return described.model_copy(update={"base_weights_sha256": "0" * 64})

    backend.describe = changed  # type: ignore[method-assign]
    try:
        reply = await admin.client.post(f"/admin/records/{record_id}/replay", headers=ADMIN)
    finally:
        backend.describe = original  # type: ignore[method-assign]
    assert reply.status_code == 200, reply.text
    assert reply.json()["status"] == "refused" and reply.json()["reason"]


@module_loop
async def test_one_records_chain_is_verified_up_to_it(admin: Admin) -> None:
    first = await recorded(admin, {"model": "ref-large", "prompt": "rev(3+4)=", "max_tokens": 2,
                                    "temperature": 0})
    later = await recorded(admin, {"model": "ref-large", "prompt": "rev(5+6)=", "max_tokens": 2,
                                    "temperature": 0})
    sink = await admin.state.recorder.reader()  # type: ignore[union-attr]
    stored, after = await sink.get(first), await sink.get(later)
    assert stored is not None and after is not None and after.chain_id == stored.chain_id
    reply = await admin.client.get(f"/admin/audit/verify?record={first}", headers=ADMIN)
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["ok"] is True and [c["chain_id"] for c in body["chains"]] == [stored.chain_id]
    assert body["chains"][0]["last_seq"] == stored.seq < after.seq  # up to the record, no further
    missing = await admin.client.get("/admin/audit/verify?record=nope", headers=ADMIN)
    assert missing.status_code == 404 and missing.json()["error"]["param"] == "record"
