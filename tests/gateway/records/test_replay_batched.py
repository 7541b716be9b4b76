"""Replay of records decoded by the in-process engine in ``batching = "invariant"`` mode: records
made under concurrent load replay IDENTICAL, and a record decoded under another batching mode is
refused (the modes' bits differ)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from gateway.backends.settings import EngineModelSettings
from gateway.records.chain import Signer
from gateway.records.replay import Replayer
from tests.gateway.records.conftest import pending
from tests.gateway.records.test_replay_engine import Served, body, send, serve_models

module_loop = pytest.mark.asyncio(loop_scope="module")

BATCHING = {"mode": "invariant", "forward": 2, "max_batch": 4, "prefill_chunk": 16}
FIRST_FORWARD = {"mode": "invariant", "max_batch": 4, "prefill_chunk": 16}
"""A record of the first invariant forward (its attention through SDPA: other bits)."""


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def served(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Served]:
    smol = EngineModelSettings(packaged="smollm2-135m-instruct", device="cpu", threads=1,
                               max_batch=4, max_new_tokens=8, batching="invariant",
                               prefill_chunk=16)
    async with serve_models({"smol": smol}, tmp_path_factory.mktemp("replay-batched")) as served:
        yield served


def replayer(served: Served) -> Replayer:
    return Replayer(served.state.settings, served.sink, served.state.registry, started=["smol"])


@module_loop
async def test_records_made_under_load_replay_identical(served: Served) -> None:
    ids = await asyncio.gather(*(send(served, body(i)) for i in range(16)))
    recorder = served.state.recorder
    assert recorder is not None and await recorder.flush()
    health = await served.state.registry.get("smol").health()
    assert max(health["step_rows"]) == 4  # they really decoded together
    # One after the other, so each replay decodes alone (or beside few).
    reports = [await replayer(served).replay(i, whole_chain=True) for i in ids[:8]]
    # And all at once, in batches again.
    reports += await asyncio.gather(*(replayer(served).replay(i, whole_chain=True)
                                      for i in ids))
    problems = [r.to_dict() for r in reports if r.status != "identical"]
    assert not problems, problems
    for record_id in ids:
        stored = await served.sink.get(record_id)
        assert stored is not None
        assert stored.data()["calls"][0]["runtime"]["batching"] == BATCHING


@module_loop
@pytest.mark.parametrize("recorded", [{"mode": "off"}, {**BATCHING, "max_batch": 8},
                                      FIRST_FORWARD, None])
async def test_a_record_of_another_batching_mode_is_refused(
        served: Served, recorded: dict[str, Any] | None) -> None:
    record_id = await send(served, {"model": "smol", "max_tokens": 3, "temperature": 0,
                                    "messages": [{"role": "user", "content": "Hi."}]})
    recorder = served.state.recorder
    assert recorder is not None and await recorder.flush()
    stored = await served.sink.get(record_id)
    assert stored is not None
    record = stored.data()
    record.pop("chain")
    altered = f"{record_id}-{recorded['mode'] if recorded else 'old'}-{len(str(recorded))}"
    record["record_id"] = record["request_id"] = altered
    runtime = record["calls"][0]["runtime"]
    if recorded is None:  # a record from before batching modes: decoded with "off"
        del runtime["batching"]
    else:
        runtime["batching"] = recorded
    await served.sink.append("main", [pending(record)], Signer(None), 1000)
    report = await replayer(served).replay(altered)
    assert report.status == "refused", report
    assert report.reason is not None and "batching" in report.reason
    was = {None: "batching off", "off": "batching off",
           8: "batching invariant (forward 2, max_batch 8, prefill_chunk 16)",
           4: "batching invariant (max_batch 4, prefill_chunk 16)"}[
        recorded.get("max_batch", "off") if recorded else None]
    assert was + ", the model" in report.reason
    assert "batching invariant (forward 2, max_batch 4, prefill_chunk 16) now" in report.reason
    assert (await replayer(served).replay(record_id)).status == "identical"
