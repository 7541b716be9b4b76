"""The recorder: spool first, store later, in order; store down → spool; backpressure; recovery.

The tests of delivery and recovery run on SQLite and on PostgreSQL (``durable_settings``)."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from gateway.kernel.errors import ServiceUnavailableError
from gateway.records.audit import verify_store
from gateway.records.recorder import Recorder
from gateway.records.schema import canonical_json
from gateway.records.settings import RecordsSettings
from gateway.records.sinks import create_sink, signer_for
from gateway.records.spool import encode_line
from tests.conftest import free_port
from tests.gateway.records.conftest import (
    PostgresServer,
    RedisServer,
    SinkSettings,
    killed_writer,
    postgres_settings,
    record_of,
    redis_settings,
    sqlite_settings,
)


async def stored_ids(settings: RecordsSettings) -> list[str]:
    sink = create_sink(settings)
    await sink.open()
    try:
        return [s.record_id async for s in sink.scan(settings.chain_id)]
    finally:
        await sink.aclose()


async def chain_ok(settings: RecordsSettings) -> bool:
    sink = create_sink(settings)
    await sink.open()
    try:
        reports = await verify_store(sink, signer_for(settings), settings.checkpoint_every)
        return all(r.ok for r in reports)
    finally:
        await sink.aclose()


def submit(recorder: Recorder, count: int, tag: str = "q") -> list[str]:
    records = [record_of(f"{tag} {i}") for i in range(count)]
    for record in records:
        recorder.submit(canonical_json(record))
    return [r["record_id"] for r in records]


async def test_records_reach_the_store_in_order(
        tmp_path: Path, durable_settings: SinkSettings) -> None:
    settings = durable_settings(batch_size=16, flush_interval_s=0.01)
    recorder = Recorder(settings)
    await recorder.start()
    ids = submit(recorder, 100)
    assert await recorder.flush()
    await recorder.aclose()
    assert await stored_ids(settings) == ids
    assert await chain_ok(settings)
    assert recorder.recorded == recorder.delivered == 100
    assert list((tmp_path / "spool").glob("*.spool")) == []  # drained segments are removed


async def test_the_store_work_runs_in_a_process_that_is_restarted_when_it_dies(
        durable_settings: SinkSettings) -> None:
    settings = durable_settings(batch_size=8, flush_interval_s=0.01)
    recorder = Recorder(settings)
    await recorder.start()
    try:
        process = recorder._process
        assert process is not None and process.pid != os.getpid()
        before = submit(recorder, 20, "before")
        assert await recorder.flush()
        os.kill(process.pid, signal.SIGKILL)
        after = submit(recorder, 20, "after")  # the spool takes them while nobody delivers
        assert await recorder.flush(wait_s=30)
        assert recorder._process is not process
        assert recorder.recorded == recorder.delivered == 40
    finally:
        await recorder.aclose()
    assert await stored_ids(settings) == before + after
    assert await chain_ok(settings)


async def test_records_wait_for_the_store_interval_unless_a_batch_or_a_flush_is_waiting(
        durable_settings: SinkSettings) -> None:
    settings = durable_settings(batch_size=8, flush_interval_s=0.01,
                               store_interval_s=30.0)
    recorder = Recorder(settings)
    await recorder.start()
    try:
        first = submit(recorder, 1, "first")
        assert await recorder.flush()  # the loop runs, and its next store is 30 s away
        waiting = submit(recorder, 3, "waiting")
        await asyncio.sleep(0.5)  # 50 looks at the spool: the records stay there
        assert await stored_ids(settings) == first
        assert recorder.backlog > 0
        batch = submit(recorder, 4, "batch")  # the 8th since the last ask: a batch is waiting
        for _ in range(200):
            if len(await stored_ids(settings)) == 8:
                break
            await asyncio.sleep(0.05)
        assert await stored_ids(settings) == first + waiting + batch
        last = submit(recorder, 2, "last")
        assert await recorder.flush(wait_s=5)
        assert await stored_ids(settings) == first + waiting + batch + last
    finally:
        await recorder.aclose()


async def test_stopping_while_the_delivery_process_is_being_restarted(
        durable_settings: SinkSettings) -> None:
    settings = durable_settings(flush_interval_s=0.01)
    recorder = Recorder(settings)
    await recorder.start()
    process = recorder._process
    assert process is not None
    os.kill(process.pid, signal.SIGKILL)
    await process.wait()
    ids = submit(recorder, 5)
    await asyncio.wait_for(recorder.aclose(), 5)  # no hang, no orphan left behind
    assert recorder._process is not None and recorder._process.returncode is not None
    later = Recorder(settings)  # the next start delivers what the dead process could not
    await later.start()
    assert await later.flush(wait_s=30)
    await later.aclose()
    assert await stored_ids(settings) == ids


async def test_graceful_shutdown_delivers_what_is_left(
        durable_settings: SinkSettings) -> None:
    settings = durable_settings(flush_interval_s=30.0)
    recorder = Recorder(settings)
    await recorder.start()
    ids = submit(recorder, 10)
    await recorder.aclose()  # no flush: closing delivers
    assert await stored_ids(settings) == ids


@pytest.mark.parametrize("store", ["redis", "postgres"])
async def test_store_down_records_wait_in_the_spool_then_arrive_in_order(
        tmp_path: Path, store: str, request: pytest.FixtureRequest) -> None:
    """A store server stopped and restarted under a running recorder (its delivery process
    keeps its store object: the connection is made again)."""
    options: dict[str, Any] = {"flush_interval_s": 0.01, "batch_size": 5,
                               "spool_max_bytes": 1 << 16}
    server: RedisServer | PostgresServer
    if store == "redis":
        server = request.getfixturevalue("durable_redis")
        settings = redis_settings(tmp_path, server, **options)
    else:
        server = request.getfixturevalue("postgres_server")
        settings = postgres_settings(tmp_path, server, **options)
    server.start()
    recorder = Recorder(settings)
    await recorder.start()
    try:
        first = submit(recorder, 5, "before")
        assert await recorder.flush()
        server.stop()
        down = submit(recorder, 12, "down")
        recorder.admit()  # still within spool_max_bytes: requests go on
        assert not await recorder.flush(wait_s=0.5)
        assert recorder.sink_error is not None
        many = submit(recorder, 40, "backlog")  # past spool_max_bytes: new requests refused
        with pytest.raises(ServiceUnavailableError) as refused:
            recorder.admit()
        assert refused.value.status == 503 and refused.value.retry_after
        server.start()
        assert await recorder.flush(wait_s=30)
        recorder.admit()
    finally:
        server.start()
        await recorder.aclose()
    assert await stored_ids(settings) == first + down + many
    assert await chain_ok(settings)


def crashed_spool(spool: Path, count: int) -> list[str]:
    """A recorder in a process spools ``count`` records (its store unreachable), then is killed
    with SIGKILL."""
    dead = f"redis://127.0.0.1:{free_port()}/0"
    return killed_writer(RecordsSettings(sink="redis", redis_url=dead, spool_dir=spool), count)


async def recovered_before_new(settings: RecordsSettings, crashed: list[str]) -> None:
    """A recorder started on ``settings`` stores the ``crashed`` records, then its own."""
    recorder = Recorder(settings)
    await recorder.start()
    new = submit(recorder, 5, "after")
    assert await recorder.flush(wait_s=30)
    await recorder.aclose()
    assert await stored_ids(settings) == crashed + new
    assert await chain_ok(settings)


async def test_a_killed_process_spool_is_recovered_before_new_records(
        durable_settings: SinkSettings) -> None:
    settings = durable_settings(flush_interval_s=0.01)
    crashed = crashed_spool(settings.spool_dir, 30)
    assert len(crashed) == 30
    (segment,) = settings.spool_dir.glob("*.spool")
    with segment.open("ab") as torn:  # a record half written when the process died
        torn.write(encode_line(b'{"record_id": "torn"}')[:-9])
    await recovered_before_new(settings, crashed)
    assert list(settings.spool_dir.glob("*.spool")) == []


async def test_a_failing_spool_refuses_requests(tmp_path: Path) -> None:
    settings = sqlite_settings(tmp_path, spool_staging="disk")  # written here, not staged
    recorder = Recorder(settings)
    await recorder.start()
    try:
        live = recorder.spool.live
        assert live is not None
        good = os.dup(live.fd)
        os.close(live.fd)
        live.fd = os.open(os.devnull, os.O_RDONLY)  # writes now fail (EBADF)
        with pytest.raises(OSError):
            recorder.submit(canonical_json(record_of()))
        with pytest.raises(ServiceUnavailableError):
            recorder.admit()
        os.close(live.fd)
        live.fd = good
        recorder.submit(canonical_json(record_of()))
        recorder.admit()
    finally:
        await recorder.aclose()


def test_settings_refuse_unknown_fields() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        RecordsSettings.model_validate({"sink": "sqlite", "batchsize": 3})
    extra: dict[str, Any] = {"sink": "kafka"}
    with pytest.raises(ValidationError):
        RecordsSettings.model_validate(extra)
