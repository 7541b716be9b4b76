"""Safe files: stores, spools, staging twins, the canary store and the shadow log are created
``0600`` in directories created ``0700`` — whatever the umask —, and a staging directory another
user could have prepared is refused: the gateway writes its spool directly and its delivery
process reads no twin from it."""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import pytest

from canary.shadow import ShadowLog, ShadowPair
from canary.state import FileCanaryStore, _atomic_write
from gateway.kernel.errors import UnsafePathError
from gateway.kernel.files import check_private_dir, make_private_dir
from gateway.records.delivery import Delivery
from gateway.records.recorder import Recorder
from gateway.records.schema import canonical_json
from gateway.records.settings import RecordsSettings
from gateway.records.spool import encode_line
from gateway.records.staging import staging_dir
from tests.gateway.records.conftest import record_of

NOBODY = 65534


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.fixture(autouse=True)
def open_umask() -> Iterator[None]:
    """A umask that takes nothing away: the modes below are the code's, not the umask's."""
    previous = os.umask(0)
    try:
        yield
    finally:
        os.umask(previous)


def settings(tmp_path: Path, **extra: object) -> RecordsSettings:
    return RecordsSettings.model_validate({
        "sink": "sqlite", "sqlite_path": str(tmp_path / "store" / "db" / "records.sqlite3"),
        "spool_dir": str(tmp_path / "var" / "spool"), "spool_memory_dir": str(tmp_path / "shm"),
        "store_interval_s": 0.05, **extra})


async def test_stores_spools_and_twins_are_private(tmp_path: Path) -> None:
    (tmp_path / "shm").mkdir(mode=0o1777)
    config = settings(tmp_path)
    recorder = Recorder(config)
    await recorder.start()
    try:
        for i in range(3):
            recorder.submit(canonical_json(record_of(f"private {i}", request_id=f"mode-{i}")))
        assert await recorder.flush()
        spool, twins = config.spool_dir, staging_dir(config.spool_dir, tmp_path / "shm")
        database = config.sqlite_path
        for directory in (spool, spool.parent, twins, database.parent, database.parent.parent):
            assert mode(directory) == 0o700, directory
        files = [*spool.iterdir(), *twins.iterdir(), *database.parent.iterdir()]
        assert {p.suffix for p in files} >= {".spool", ".delivered", ".sqlite3"}
        assert any(p.name.endswith("-wal") for p in files)
        for path in files:
            assert mode(path) == 0o600, path
    finally:
        await recorder.aclose()


def test_the_canary_store_and_the_shadow_log_are_private(tmp_path: Path) -> None:
    store = FileCanaryStore(tmp_path / "canary")
    _atomic_write(store.model_dir("small") / "state.json", b"{}")

    @dataclass
    class Pair:
        at: float = 0.0

        def to_json(self) -> bytes:
            return b"{}"

    ShadowLog(tmp_path / "shadow" / "log").append([cast(ShadowPair, Pair())])
    for directory in (tmp_path / "canary", store.model_dir("small"), tmp_path / "shadow",
                      tmp_path / "shadow" / "log"):
        assert mode(directory) == 0o700, directory
    for path in [*store.model_dir("small").iterdir(), *(tmp_path / "shadow" / "log").iterdir()]:
        assert mode(path) == 0o600, path


async def test_the_canary_lock_file_is_private(tmp_path: Path) -> None:
    store = FileCanaryStore(tmp_path / "canary")
    async with store.lock("small"):
        pass
    assert mode(store.model_dir("small") / ".lock") == 0o600


def test_a_directory_others_could_have_prepared_is_refused(tmp_path: Path) -> None:
    open_dir, foreign, private = tmp_path / "open", tmp_path / "foreign", tmp_path / "private"
    make_private_dir(private)
    check_private_dir(private)
    open_dir.mkdir(mode=0o777)
    with pytest.raises(UnsafePathError, match="writable by its group or others"):
        check_private_dir(open_dir)
    foreign.mkdir(mode=0o700)
    os.chown(foreign, NOBODY, NOBODY)
    with pytest.raises(UnsafePathError, match="belongs to uid"):
        check_private_dir(foreign)
    (tmp_path / "link").symlink_to(private)
    with pytest.raises(UnsafePathError, match="not a directory"):
        check_private_dir(tmp_path / "link")


@pytest.mark.parametrize("prepared", ["world-writable", "foreign", "symlink"])
async def test_a_prepared_staging_dir_is_refused_and_records_go_to_disk(
        tmp_path: Path, prepared: str, caplog: pytest.LogCaptureFixture) -> None:
    config = settings(tmp_path)
    twins = staging_dir(config.spool_dir, tmp_path / "shm")
    if prepared == "symlink":
        make_private_dir(tmp_path / "elsewhere")
        (tmp_path / "shm").mkdir()
        twins.symlink_to(tmp_path / "elsewhere")
    else:
        twins.mkdir(parents=True, mode=0o777)
        if prepared == "foreign":
            os.chmod(twins, 0o755)
            os.chown(twins, NOBODY, NOBODY)
    recorder = Recorder(config)
    with caplog.at_level(logging.ERROR, logger="tiergate.records.spool"):
        await recorder.start()
    try:
        assert recorder.spool.staging is None
        assert "shared-memory staging refused" in caplog.text
        recorder.submit(canonical_json(record_of("on disk", request_id="disk-1")))
        assert await recorder.flush()
        assert not list(twins.glob("*.spool"))  # nothing staged in the prepared directory
    finally:
        await recorder.aclose()


def test_delivery_reads_no_twin_from_a_directory_others_can_write(tmp_path: Path) -> None:
    """A twin planted for a segment to adopt would be copied into it, then stored."""
    config = settings(tmp_path)
    make_private_dir(config.spool_dir)
    planted = encode_line(canonical_json(record_of("planted", request_id="planted-1")))
    for trusted in (False, True):
        segment = config.spool_dir / f"{trusted:020d}-999999.spool"  # its writer is gone
        segment.touch(mode=0o600)
        twins = staging_dir(config.spool_dir, tmp_path / "shm")
        twins.mkdir(parents=True, mode=0o700 if trusted else 0o777, exist_ok=True)
        os.chmod(twins, 0o700 if trusted else 0o777)
        (twins / segment.name).write_bytes(planted)
        delivery = Delivery(config, writer=os.getpid(), shutdown_timeout_s=1, status_fd=-1)
        delivery.adopt()
        adopted = segment.read_bytes()
        for found in delivery.adopted:
            found.close()
        assert adopted == (planted if trusted else b""), trusted
        segment.unlink()
