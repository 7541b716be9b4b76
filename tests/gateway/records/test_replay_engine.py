"""Replay on the in-process engine is bit-identical: greedy and seeded-sampled decodes, also of
requests that ran 50 at once, at full precision and on the default config's int8 small tier.
One app (and one loaded SmolLM2-135M, at fp32 and at int8) serves the module."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio

from gateway.backends.settings import EngineModelSettings
from gateway.http.app import create_app
from gateway.http.state import GatewayState
from gateway.records.chain import Signer
from gateway.records.replay import Replayer
from gateway.records.settings import RecordsSettings
from gateway.records.sinks import create_sink
from gateway.records.sinks.base import RecordSink
from gateway.settings import Settings
from tests.conftest import REPO
from tests.gateway.records.conftest import pending

module_loop = pytest.mark.asyncio(loop_scope="module")


@dataclass
class Served:
    client: httpx.AsyncClient
    state: GatewayState
    sink: RecordSink


@asynccontextmanager
async def serve_models(models: dict[str, EngineModelSettings], directory: Path
                       ) -> AsyncIterator[Served]:
    """One app serving ``models`` with records in ``directory``, a client and its record store."""
    settings = Settings(
        models=models, models_dir=REPO / "var" / "models",
        records=RecordsSettings(sqlite_path=directory / "records.sqlite3",
                                spool_dir=directory / "spool", flush_interval_s=0.01),
    )
    app = create_app(settings)
    state: GatewayState = app.gateway
    async with app.lifespan():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://tiergate",
                                     timeout=300) as client:
            sink = create_sink(settings.records)
            await sink.open()
            yield Served(client, state, sink)
            await sink.aclose()


async def send(served: Served, request: dict[str, Any]) -> str:
    """``request`` to the completions or chat endpoint; its record id."""
    path = "/v1/completions" if "prompt" in request else "/v1/chat/completions"
    response = await served.client.post(path, json=request)
    assert response.status_code == 200, response.text
    return str(response.headers["x-tiergate-record-id"])


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def served(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Served]:
    models = {
        "smol": EngineModelSettings(packaged="smollm2-135m-instruct", device="cpu", threads=1,
                                    max_batch=8, max_new_tokens=8),
        # the small tier of deploy/local/tiergate.toml: int8 weights, float activations, the
        # output head's top 32 re-scored in float
        "smol-int8": EngineModelSettings(
            packaged="smollm2-135m-instruct", device="cpu", threads=1, max_batch=8,
            max_new_tokens=8, int8=True, int8_activations="float", int8_rescore_top_k=32)}
    async with serve_models(models, tmp_path_factory.mktemp("replay-engine")) as served:
        yield served


def body(i: int, model: str = "smol") -> dict[str, Any]:
    """Greedy, seeded-sampled and gateway-seeded requests, chat and completions, some with
    logprobs."""
    kind = i % 3
    request: dict[str, Any] = {"model": model, "max_tokens": 3}
    if kind == 0:
        request["temperature"] = 0
    elif kind == 1:
        request.update(temperature=0.9, top_p=0.95, seed=1000 + i)
    else:
        request.update(temperature=1.1, top_k=40)  # the gateway draws the seed
    if i % 4:  # short prompts keep the module fast; every fourth is a chat
        request["prompt"] = f"{i} apples and"
        request["logprobs"] = 2 if i % 2 else None
    else:
        request["messages"] = [{"role": "user", "content": f"Say a word about {i}."}]
        request["logprobs"] = i % 8 == 0
    return request


@module_loop
async def test_fifty_concurrent_requests_replay_bit_identical(served: Served) -> None:
    ids = await asyncio.gather(*(send(served, body(i)) for i in range(50)))
    recorder = served.state.recorder
    assert recorder is not None and await recorder.flush()
    assert served.state.registry.get("smol").describe().base_weights_sha256
    replayer = Replayer(served.state.settings, served.sink, served.state.registry,
                        started=["smol"])
    reports = await asyncio.gather(*(replayer.replay(i, whole_chain=True) for i in ids))
    problems = [r.to_dict() for r in reports if r.status != "identical"]
    assert not problems, problems
    sources = set()
    for record_id in ids:
        stored = await served.sink.get(record_id)
        assert stored is not None
        data = stored.data()
        sources.add(data["seed"]["source"])
        call = data["calls"][0]
        assert call["runtime"]["device"] and call["runtime"]["torch"].startswith("2.13.0")
        assert call["prompt_token_ids"] and call["choices"][0]["token_ids"]
    assert sources == {"none", "client", "gateway"}


@module_loop
async def test_int8_small_tier_decodes_replay_bit_identical(served: Served) -> None:
    """Weight-only int8 with the re-scored head: 16 requests at once (greedy, seeded, logprobs)
    replay to the same token ids and logprobs."""
    ids = await asyncio.gather(*(send(served, body(i, "smol-int8")) for i in range(16)))
    recorder = served.state.recorder
    assert recorder is not None and await recorder.flush()
    quantization = served.state.registry.get("smol-int8").describe().quantization
    assert quantization.method == "int8-weight-only"
    replayer = Replayer(served.state.settings, served.sink, served.state.registry,
                        started=["smol-int8"])
    reports = await asyncio.gather(*(replayer.replay(i) for i in ids))
    problems = [r.to_dict() for r in reports if r.status != "identical"]
    assert not problems, problems
    stored = await served.sink.get(ids[0])
    assert stored is not None
    assert stored.data()["calls"][0]["model"]["quantization"]["method"] == "int8-weight-only"


@module_loop
async def test_a_different_recorded_token_is_reported_with_both_logprobs(
        served: Served) -> None:
    response = await served.client.post("/v1/chat/completions", json={
        "model": "smol", "max_tokens": 6, "temperature": 0.8, "seed": 5,
        "messages": [{"role": "user", "content": "Name a fruit."}]})
    record_id = response.headers["x-tiergate-record-id"]
    recorder = served.state.recorder
    assert recorder is not None and await recorder.flush()
    stored = await served.sink.get(record_id)
    assert stored is not None
    # A record (properly chained) whose output differs at token 2 from what the model decodes.
    record = stored.data()
    record.pop("chain")
    record["record_id"] = record["request_id"] = record_id + "-altered"
    choice = record["calls"][0]["choices"][0]
    original = choice["token_ids"][2]
    choice["token_ids"][2] = original + 1
    await served.sink.append("main", [pending(record)], Signer(None), 1000)
    replayer = Replayer(served.state.settings, served.sink, served.state.registry,
                        started=["smol"])
    report = await replayer.replay(record_id + "-altered")
    assert report.status == "diverged", report
    (compared,) = report.calls[0].choices
    assert compared.status == "diverged" and compared.compared == "token_ids"
    assert compared.position == 2
    assert compared.recorded is not None and compared.replayed is not None
    assert compared.recorded.token_id == original + 1 and compared.replayed.token_id == original
    assert compared.replayed.logprob is not None and compared.replayed.logprob <= 0
    assert (await replayer.replay(record_id)).status == "identical"


@module_loop
async def test_a_redacted_record_is_refused(served: Served) -> None:
    stored = await anext(aiter(served.sink.scan("main")))
    record = stored.data()
    record.pop("chain")
    record["record_id"] = "redacted-copy"
    record["input"]["messages"] = {"redacted": True, "sha256": "00" * 32}
    record["input"]["prompt"] = {"redacted": True, "sha256": "00" * 32}
    await served.sink.append("main", [pending(record)], Signer(None), 1000)
    replayer = Replayer(served.state.settings, served.sink, served.state.registry,
                        started=["smol"])
    report = await replayer.replay("redacted-copy")
    assert report.status == "refused" and report.reason and "redacted" in report.reason


@module_loop
async def test_a_stream_cut_short_is_refused(served: Served) -> None:
    stored = await anext(aiter(served.sink.scan("main")))
    record = stored.data()
    record.pop("chain")
    record["record_id"] = "cut-copy"
    record["status"] = 499  # the client went away: the record keeps what was generated
    await served.sink.append("main", [pending(record)], Signer(None), 1000)
    replayer = Replayer(served.state.settings, served.sink, served.state.registry,
                        started=["smol"])
    report = await replayer.replay("cut-copy")
    assert report.status == "refused" and report.reason and "cut short (status 499)" in \
        report.reason
