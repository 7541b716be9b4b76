"""Shared-memory staging of the spool: records copied to a tmpfs twin on the request path, moved
to the disk segment by the delivery process; nothing lost when either process dies or when the
twin is gone (a reboot). The tests that store what they recover run on SQLite and on
PostgreSQL (``durable_settings``)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from gateway.records.recorder import Recorder
from gateway.records.schema import canonical_json
from gateway.records.settings import RecordsSettings
from gateway.records.spool import Spool, encode_line, line_parts
from gateway.records.staging import MemorySegment, Pump, staging_dir, whole_lines
from tests.gateway.records.conftest import SinkSettings, killed_writer, record_of
from tests.gateway.records.test_recorder import (
    chain_ok,
    recovered_before_new,
    stored_ids,
    submit,
)


def twins(settings: RecordsSettings) -> list[Path]:
    return sorted(staging_dir(settings.spool_dir, settings.spool_memory_dir).glob("*.spool"))


def test_a_line_is_whole_only_when_every_byte_of_it_is_there() -> None:
    lines = [encode_line(json.dumps({"n": i}).encode()) for i in range(3)]
    data = b"".join(lines)
    assert whole_lines(data + bytes(100)) == len(data)
    half = lines[2][:5] + bytes(len(lines[2]) - 6) + b"\n"  # the copy's middle not there yet
    assert whole_lines(lines[0] + lines[1] + half) == len(lines[0]) + len(lines[1])
    assert whole_lines(bytes(10) + data) == 0  # a zero is the end of what was written
    assert whole_lines(lines[0][:-1]) == 0  # no newline yet
    assert whole_lines(b"zzzzzzzz " + lines[0][9:]) == 0  # not a crc


def test_the_request_path_writes_the_twin_and_the_delivery_side_copies_it(
        tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", "batch", Path("/dev/shm"))
    spool.open()
    try:
        assert spool.live is not None and spool.live.memory is not None
        bodies = [canonical_json(record_of(f"r{i}")) for i in range(20)]
        for body in bodies:
            spool.append(body)
        disk, twin = spool.live.path, spool.live.memory.path
        assert disk.stat().st_size == 0  # nothing on disk yet: the copy is all the path did
        pump = Pump(twin, disk)
        assert pump.run() == spool.live.size == disk.stat().st_size
        assert disk.read_bytes() == b"".join(encode_line(b) for b in bodies)
        assert pump.run() == 0
        spool.append(bodies[0])
        assert pump.run() == len(encode_line(bodies[0]))
        pump.finish(writer_alive=True)
        assert not twin.exists()
    finally:
        spool.close()


def test_a_copy_cut_short_by_a_crash_is_cut_and_copied_again(tmp_path: Path) -> None:
    lines = [encode_line(canonical_json(record_of(f"c{i}"))) for i in range(3)]
    twin = MemorySegment(tmp_path / "twin.spool", 1 << 16)
    for line in lines:
        twin.write(line_parts(line[9:-1]))
    twin.close()
    disk = tmp_path / "disk.spool"
    disk.write_bytes(lines[0] + lines[1][:40])  # the delivery process died mid-write
    pump = Pump(twin.path, disk)
    assert pump.offset == len(lines[0])
    assert pump.run() == len(lines[1]) + len(lines[2])
    assert disk.read_bytes() == b"".join(lines)
    pump.close()


async def test_records_of_a_killed_gateway_only_in_shared_memory_are_recovered(
        durable_settings: SinkSettings) -> None:
    # Its delivery process never looked (flush_interval_s = 60): every record is in the twin.
    settings = durable_settings(flush_interval_s=60.0)
    crashed = killed_writer(settings, 40)
    assert len(crashed) == 40
    (segment,) = settings.spool_dir.glob("*.spool")
    assert segment.stat().st_size == 0
    (twin,) = twins(settings)
    size = whole_lines(twin.read_bytes())
    with twin.open("r+b") as torn:  # and a record half copied when the process died
        torn.seek(size)
        torn.write(encode_line(b'{"record_id": "torn"}')[:-9])
    await recovered_before_new(durable_settings(flush_interval_s=0.01), crashed)
    assert list(settings.spool_dir.glob("*.spool")) == [] and twins(settings) == []


async def test_after_a_reboot_the_disk_segment_has_what_was_fsynced(
        tmp_path: Path, durable_settings: SinkSettings) -> None:
    # The store is unreachable, so the records stay in the spool; the delivery process copies
    # and fsyncs them every 10 ms. Then the machine "reboots": the tmpfs twin is gone.
    settings = RecordsSettings(sink="redis", redis_url="redis://127.0.0.1:9/0",
                               spool_dir=tmp_path / "spool", flush_interval_s=0.01)
    crashed = killed_writer(settings, 30, before_kill=1.0)
    (twin,) = twins(settings)
    (segment,) = settings.spool_dir.glob("*.spool")
    assert segment.read_bytes() == twin.read_bytes()[:segment.stat().st_size] != b""
    twin.unlink()
    stored = durable_settings()
    recorder = Recorder(stored)
    await recorder.start()
    assert await recorder.flush(wait_s=30)
    await recorder.aclose()
    assert await stored_ids(stored) == crashed
    assert await chain_ok(stored)


def test_a_closed_spool_leaves_its_records_on_disk_not_in_memory(tmp_path: Path) -> None:
    # No delivery process copied the twins (it was killed, or never ran): the gateway copies
    # them to the disk segments when it closes its spool.
    spool = Spool(tmp_path / "spool", "batch", Path("/dev/shm"))
    spool.memory_bytes = 16 << 10
    spool.open()
    bodies = [canonical_json(record_of(f"q {i}")) for i in range(60)]
    for body in bodies:
        spool.append(body)
    segments = [s.path for s in spool.segments]
    assert len(segments) > 2 and segments[-1].stat().st_size == 0
    assert spool.staging is not None
    staging = spool.staging
    spool.close()
    assert not staging.exists()
    assert b"".join(p.read_bytes() for p in segments) == b"".join(map(encode_line, bodies))


async def test_a_stop_delivers_the_segments_started_just_before_it(
        durable_settings: SinkSettings) -> None:
    settings = durable_settings(flush_interval_s=0.01)
    recorder = Recorder(settings)
    recorder.spool.memory_bytes = 16 << 10
    await recorder.start()
    ids = submit(recorder, 5, "first")
    assert await recorder.flush(wait_s=30)  # the delivery process has seen the first segment
    ids += submit(recorder, 60)  # new segments, stopped before its next look at the directory
    assert len(recorder.spool.segments) > 2
    await recorder.aclose()
    assert await stored_ids(settings) == ids
    assert list(settings.spool_dir.glob("*.spool")) == [] and twins(settings) == []


async def test_records_keep_their_order_across_many_twins(
        durable_settings: SinkSettings) -> None:
    settings = durable_settings(flush_interval_s=0.01, batch_size=7)
    recorder = Recorder(settings)
    recorder.spool.memory_bytes = 16 << 10  # a new twin every few records
    await recorder.start()
    try:
        ids = []
        for round_ in range(4):
            ids += submit(recorder, 25, f"round {round_}")
            big = record_of("long " * 8000)  # longer than a twin: gets one of its own size
            recorder.submit(canonical_json(big))
            ids.append(big["record_id"])
            await asyncio.sleep(0.02)
        assert len(recorder.spool.segments) > 4
        assert await recorder.flush(wait_s=30)
    finally:
        await recorder.aclose()
    assert await stored_ids(settings) == ids
    assert await chain_ok(settings)
    assert list(settings.spool_dir.glob("*.spool")) == [] and twins(settings) == []


@pytest.mark.parametrize("how", ["no usable directory", "fsync always", "staging disk"])
async def test_records_go_to_disk_directly_without_staging(
        tmp_path: Path, how: str, durable_settings: SinkSettings) -> None:
    not_a_directory = tmp_path / "file"
    not_a_directory.write_bytes(b"")
    choices: dict[str, dict[str, Any]] = {
        "no usable directory": {"spool_memory_dir": not_a_directory},
        "fsync always": {"spool_fsync": "always"},
        "staging disk": {"spool_staging": "disk"}}
    settings = durable_settings(flush_interval_s=60.0, **choices[how])
    recorder = Recorder(settings)
    await recorder.start()
    try:
        assert recorder.spool.staging is None
        ids = submit(recorder, 3)
        live = recorder.spool.live
        assert live is not None and live.memory is None
        assert live.path.stat().st_size == live.size > 0
        assert await recorder.flush(wait_s=30)
    finally:
        await recorder.aclose()
    assert await stored_ids(settings) == ids
