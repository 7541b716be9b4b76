"""``tiergate serve --workers 2``: each worker spools and delivers its own records to one store
(SQLite or PostgreSQL)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx

from gateway.records.audit import verify_store
from gateway.records.sinks import create_sink, signer_for
from tests.conftest import GatewayFactory, ServerProcess, process_tree, upstream_model
from tests.gateway.records.conftest import SinkSettings, records_section
from tests.gateway.records.test_kill9 import PIN
from tests.gateway.records.test_recorder import stored_ids


def descendants(gateway: ServerProcess) -> list[bytes]:
    """The command lines of the supervisor's descendants: uvicorn's workers and their delivery
    processes."""
    return [Path(f"/proc/{pid}/cmdline").read_bytes()
            for pid in process_tree(gateway.process.pid)[1:]]


async def test_two_workers_record_every_answer_into_one_chain(
        gateway_factory: GatewayFactory, upstream: ServerProcess, tmp_path: Path,
        durable_settings: SinkSettings) -> None:
    store = durable_settings(flush_interval_s=0.02)
    gateway = gateway_factory(
        {"models.echo": upstream_model(upstream, "echo", weights_sha256=PIN),
         "records": records_section(store)},
        extra_args=["--workers", "2"])
    ids: list[str] = []
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as http:
        async def client(worker: int) -> None:
            for i in range(25):
                body = {"model": "echo", "stream": i % 2 == 0, "temperature": 0.7,
                        "messages": [{"role": "user", "content": f"client {worker} #{i}"}]}
                async with http.stream("POST", "/v1/chat/completions", json=body) as resp:
                    await resp.aread()
                    assert resp.status_code == 200
                    ids.append(resp.headers["x-tiergate-record-id"])

        await asyncio.gather(*(client(w) for w in range(8)))
    # two workers, each with its own delivery process (python -c ... delivery main)
    commands = descendants(gateway)
    assert sum(b"gateway.records.delivery" in c for c in commands) == 2, commands
    assert gateway.stop() == 0  # SIGTERM: each worker's delivery process delivers what is left

    stored = await stored_ids(store)
    assert set(stored) == set(ids) and len(stored) == len(ids) == 200
    sink = create_sink(store)
    await sink.open()
    try:
        (report,) = await verify_store(sink, signer_for(store), 1000)
    finally:
        await sink.aclose()
    assert report.ok and report.records == 200, report
    assert list((tmp_path / "spool").glob("*.spool")) == [], gateway.logs()
