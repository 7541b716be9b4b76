"""kill -9 the gateway under load, restart it, count: every answered request has its record.

A real tiergate process (models backed by the scriptable upstream) is killed with SIGKILL while
clients stream and fetch answers. A request counts as answered when its client saw the whole
answer (the JSON body, or ``data: [DONE]``). After a restart on the same spool and store, every
answered request's record must be in the store and the chain must verify — with the store in
SQLite and in PostgreSQL alike.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path
from typing import Any

import httpx

from gateway.records.audit import verify_store
from gateway.records.sinks import create_sink, signer_for
from tests.conftest import GatewayFactory, ServerProcess, upstream_model
from tests.gateway.records.conftest import SinkSettings, records_section
from tests.gateway.records.test_recorder import stored_ids

PIN = "cd" * 32


async def load_then_kill(gateway: ServerProcess, answers: int, concurrency: int = 8
                         ) -> list[str]:
    """Send requests until ``answers`` were answered, then kill -9 the gateway at once."""
    answered: list[str] = []
    killed = False

    async def client(worker: int) -> None:
        nonlocal killed
        async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as http:
            for i in range(10_000):
                if killed:
                    return
                stream = (worker + i) % 2 == 0
                body = {"model": "echo", "stream": stream, "temperature": 0.5,
                        "messages": [{"role": "user", "content": f"worker {worker} #{i}"}]}
                try:
                    async with http.stream("POST", "/v1/chat/completions", json=body) as resp:
                        data = await resp.aread()
                except httpx.HTTPError:
                    return  # the gateway is gone
                complete = (b"data: [DONE]" in data) if stream else data.endswith(b"}")
                if resp.status_code == 200 and complete:
                    answered.append(resp.headers["x-tiergate-record-id"])
                    if len(answered) >= answers and not killed:
                        killed = True
                        os.kill(gateway.process.pid, signal.SIGKILL)

    await asyncio.gather(*(client(w) for w in range(concurrency)))
    gateway.process.wait(10)
    assert killed and gateway.process.returncode == -signal.SIGKILL
    return answered


async def test_kill_9_under_load_loses_no_answered_request(
        gateway_factory: GatewayFactory, upstream: ServerProcess, tmp_path: Path,
        durable_settings: SinkSettings) -> None:
    store = durable_settings(signing_key="k", checkpoint_every=50)

    def start(**records: Any) -> ServerProcess:
        return gateway_factory({"models.echo": upstream_model(upstream, "echo",
                                                              weights_sha256=PIN),
                                "records": {**records_section(store), **records}})

    # 1. A writer that never got to deliver (long flush interval): everything is in the spool.
    first = await load_then_kill(start(flush_interval_s=60, batch_size=10_000), answers=150)
    assert len(set(first)) == len(first) >= 150
    assert not set(await stored_ids(store)) & set(first)
    # 2. Default delivery: some records are in the store, the rest in the spool, at the kill.
    second = await load_then_kill(start(), answers=150)
    # 3. A restart recovers both dead processes' spools.
    survivor = start()
    deadline = time.monotonic() + 60
    missing = set(first + second)
    while missing and time.monotonic() < deadline:
        missing -= set(await stored_ids(store))
        await asyncio.sleep(0.1)
    assert not missing, f"{len(missing)} answered requests have no record"

    sink = create_sink(store)
    await sink.open()
    try:
        (report,) = await verify_store(sink, signer_for(store), 50)
    finally:
        await sink.aclose()
    assert report.ok, report
    assert report.records >= len(first) + len(second)
    survivor.stop()  # SIGTERM: a graceful shutdown delivers everything and empties the spool
    assert list((tmp_path / "spool").glob("*.spool")) == [], survivor.logs()
