"""``tiergate serve --workers 2``: each worker spools and delivers its own records to one store."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import httpx

from gateway.records.audit import verify_store
from gateway.records.chain import Signer
from gateway.records.sinks.sqlite import SQLiteSink
from tests.conftest import GatewayFactory, ServerProcess, process_tree, upstream_model
from tests.gateway.records.test_kill9 import PIN


def descendants(gateway: ServerProcess) -> list[bytes]:
    """The command lines of the supervisor's descendants: uvicorn's workers and their delivery
    processes."""
    return [Path(f"/proc/{pid}/cmdline").read_bytes()
            for pid in process_tree(gateway.process.pid)[1:]]


async def test_two_workers_record_every_answer_into_one_chain(
        gateway_factory: GatewayFactory, upstream: ServerProcess, tmp_path: Path) -> None:
    store = tmp_path / "records.sqlite3"
    gateway = gateway_factory(
        {"models.echo": upstream_model(upstream, "echo", weights_sha256=PIN),
         "records": {"sqlite_path": str(store), "spool_dir": str(tmp_path / "spool"),
                     "flush_interval_s": 0.02}},
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

    with sqlite3.connect(store) as conn:
        stored = {row[0] for row in conn.execute("SELECT record_id FROM records")}
    assert stored == set(ids) and len(ids) == 200
    sink = SQLiteSink(store)
    await sink.open()
    try:
        (report,) = await verify_store(sink, Signer(None), 1000)
    finally:
        await sink.aclose()
    assert report.ok and report.records == 200, report
    assert list((tmp_path / "spool").glob("*.spool")) == [], gateway.logs()
