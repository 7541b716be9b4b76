"""The local append-only spool: every record is written here before its response is sent.

A spool is a directory of segment files. Each gateway process appends to its own segment
(``<time>-<pid>.spool``), holding an exclusive ``flock`` on it for as long as it lives; a line is
``<crc32 of the JSON, 8 hex> <record JSON>\\n`` (the record, or its draft, which
:func:`decode_line` finishes: see :mod:`gateway.records.builder`), written with one ``writev(2)``
— or, staged (the default), copied to the segment's twin in shared memory, which the delivery
process copies to the segment (:mod:`gateway.records.staging`): once the call returns, the record
survives the process dying (``kill -9`` included); with ``fsync`` it survives the machine losing
power. Beside each segment, ``<name>.delivered`` holds
how many of its bytes the store has (stores also skip record ids they already have, so a lost
marker costs a re-send, never a duplicate).

Two processes share a segment: the gateway process writes it (:class:`Spool`), its records
delivery process (:mod:`gateway.records.delivery`) reads it (:class:`Segment`) and moves the
records to the store. A segment whose writer died (its lock is free) is *adopted* by the next
delivery process that starts on the spool directory.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import orjson

from gateway.kernel.errors import UnsafePathError, UpstreamError
from gateway.kernel.files import FILE_MODE, check_private_dir, make_private_dir, writable_by_others
from gateway.records.builder import finish_draft
from gateway.records.schema import canonical_json
from gateway.records.sinks.base import PendingRecord
from gateway.records.staging import MEMORY_SEGMENT_BYTES, MemorySegment, Pump, staging_dir

log = logging.getLogger("tiergate.records.spool")

_READ_CHUNK = 4 << 20
SEGMENT_BYTES = 64 << 20
"""A live segment of this size or more is retired and a fresh one started."""


def encode_line(body: bytes) -> bytes:
    return b"".join(line_parts(body))


def line_parts(body: bytes) -> tuple[bytes, bytes, bytes]:
    """A spool line in three pieces, written with one ``writev`` (no copy of the body)."""
    return b"%08x " % zlib.crc32(body), body, b"\n"


def decode_line(line: bytes) -> PendingRecord | None:
    """A spool line → the record (a draft finished), or ``None`` when it is damaged."""
    crc, _, body = line.partition(b" ")
    try:
        if int(crc, 16) != zlib.crc32(body):
            return None
        record = orjson.loads(body)
        if finish_draft(record):
            body = canonical_json(record)
        return PendingRecord.of(record, body)
    except (ValueError, KeyError, TypeError, AttributeError, orjson.JSONDecodeError,
            UpstreamError):
        return None


def writer_pid(path: Path) -> int | None:
    """The process that writes (or wrote) a segment, from its name."""
    try:
        return int(path.stem.rsplit("-", 1)[1])
    except (IndexError, ValueError):
        return None


@dataclass(slots=True)
class SpoolEntry:
    start: int
    end: int
    record: PendingRecord | None
    """``None``: a damaged line (skipped, and logged)."""


class Segment:
    """One spool file as its reader sees it: its size and how much of it the store has."""

    def __init__(self, path: Path, fd: int, delivered: int) -> None:
        self.path = path
        self.fd = fd
        self.size = os.fstat(fd).st_size
        self.delivered = min(delivered, self.size)
        self._marker_fd: int | None = None

    @classmethod
    def of(cls, path: Path, fd: int) -> Segment:
        """The segment at ``path`` read through ``fd``, resuming where its marker says."""
        try:
            return cls(path, fd, _delivered_of(path.with_suffix(".delivered")))
        except BaseException:
            os.close(fd)
            raise

    @classmethod
    def open(cls, path: Path) -> Segment:
        return cls.of(path, os.open(path, os.O_RDONLY))

    @property
    def marker(self) -> Path:
        return self.path.with_suffix(".delivered")

    @property
    def backlog(self) -> int:
        return self.size - self.delivered

    def refresh(self) -> int:
        """Re-read the size (its writer appends to it); the new backlog."""
        self.size = os.fstat(self.fd).st_size
        return self.backlog

    def read(self, offset: int, limit: int) -> list[SpoolEntry]:
        """Up to ``limit`` whole lines from ``offset`` (a line still being written is left:
        a reader sees a prefix of a write, and a line's newline is its last byte)."""
        data = os.pread(self.fd, max(min(self.size - offset, _READ_CHUNK), 0), offset)
        if b"\n" not in data and len(data) == _READ_CHUNK:  # one line longer than a chunk
            data = os.pread(self.fd, max(self.size - offset, _READ_CHUNK), offset)
        entries: list[SpoolEntry] = []
        position = 0
        while len(entries) < limit:
            end = data.find(b"\n", position)
            if end < 0:
                break
            record = decode_line(data[position:end])
            if record is None:
                log.error("spool %s: damaged record at byte %d skipped", self.path,
                          offset + position)
            entries.append(SpoolEntry(offset + position, offset + end + 1, record))
            position = end + 1
        return entries

    def mark_delivered(self, offset: int) -> None:
        self.delivered = offset
        try:
            if self._marker_fd is None:
                self._marker_fd = os.open(self.marker, os.O_WRONLY | os.O_CREAT, FILE_MODE)
            os.pwrite(self._marker_fd, b"%020d" % offset, 0)
        except OSError as exc:  # only an optimisation: the store deduplicates
            log.warning("spool %s: cannot write %s: %s", self.path, self.marker, exc)

    def sync(self) -> None:
        os.fdatasync(self.fd)

    def remove(self) -> None:
        for path in (self.path, self.marker):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        self.close()

    def close(self) -> None:
        os.close(self.fd)
        if self._marker_fd is not None:
            os.close(self._marker_fd)
            self._marker_fd = None


def _delivered_of(marker: Path) -> int:
    try:
        return int(marker.read_bytes().strip() or b"0")
    except (OSError, ValueError):
        return 0


@dataclass(slots=True)
class WrittenSegment:
    """A segment of this process: its locked descriptor, how many bytes it holds and, while it
    is the live one, its memory twin (:mod:`gateway.records.staging`)."""

    path: Path
    fd: int
    size: int = 0
    memory: MemorySegment | None = None


class Spool:
    """The writing side, in the gateway process: its live segment and the retired ones its
    delivery process has not finished with (still locked, so nobody else adopts them).

    With ``memory_dir``, records are copied to the live segment's memory twin and the delivery
    process writes them to the disk segment; without it (or with ``fsync = "always"``, or when
    a twin cannot be allocated) they are written to the disk segment here."""

    def __init__(self, directory: Path, fsync: str = "batch",
                 memory_dir: Path | None = None) -> None:
        self.directory = directory
        self.fsync = fsync
        self.staging = None if memory_dir is None or fsync == "always" \
            else staging_dir(directory, memory_dir)
        self.memory_bytes = MEMORY_SEGMENT_BYTES
        """The size of a memory twin (a record longer than this gets one of its size)."""
        self.live: WrittenSegment | None = None
        self.retired: list[WrittenSegment] = []
        self.failed: OSError | None = None
        """The last append's error, until an append succeeds again."""
        self.written = 0
        """Bytes this process appended, over all its segments."""

    def open(self) -> None:
        make_private_dir(self.directory)
        if writable_by_others(self.directory):
            log.warning("records: the spool %s is not the gateway user's or others can write "
                        "to it: they could add records to it (make it the gateway user's, mode "
                        "0700)", self.directory)
        if self.staging is not None:
            try:
                make_private_dir(self.staging)
                check_private_dir(self.staging)
            except UnsafePathError as exc:
                log.error("records: shared-memory staging refused: %s; records are written to "
                          "%s directly", exc, self.directory)
                self.staging = None
            except OSError as exc:
                log.warning("records: no shared-memory staging in %s (%s): records are written "
                            "to %s directly", self.staging, exc, self.directory)
                self.staging = None
        self.live = self._new_segment()

    def _new_segment(self, capacity: int = 0) -> WrittenSegment:
        name = f"{time.time_ns():020d}-{os.getpid()}"
        memory = None
        if self.staging is not None:  # the twin first: the delivery process looks for it
            try:                      # when it finds the disk segment
                capacity = max(capacity, self.memory_bytes)
                memory = MemorySegment(self.staging / f"{name}.spool", capacity)
            except OSError as exc:
                log.warning("records: cannot allocate %d bytes of shared memory in %s (%s): "
                            "this segment is written to disk directly", capacity,
                            self.staging, exc)
        temporary = self.directory / f"{name}.tmp"
        fd = os.open(temporary, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_APPEND, FILE_MODE)
        fcntl.flock(fd, fcntl.LOCK_EX)
        path = self.directory / f"{name}.spool"
        os.rename(temporary, path)  # visible to other processes only once locked
        return WrittenSegment(path, fd, memory=memory)

    def append(self, body: bytes) -> None:
        """Write one record (its canonical JSON ``body``) to the live segment."""
        segment = self.live
        assert segment is not None, "spool not open"
        parts = line_parts(body)
        length = len(body) + 10
        if segment.memory is not None:
            if not segment.memory.write(parts):
                try:
                    segment = self._rotate(length)
                except OSError as exc:
                    self.failed = exc
                    raise
                if segment.memory is None or not segment.memory.write(parts):
                    self._write(segment, parts, length)
        else:
            self._write(segment, parts, length)
        self.failed = None
        segment.size += length
        self.written += length
        if segment.memory is None and segment.size >= SEGMENT_BYTES:
            self._rotate(0)

    def _write(self, segment: WrittenSegment, parts: tuple[bytes, bytes, bytes],
               length: int) -> None:
        start = segment.size
        try:
            written = os.writev(segment.fd, parts)
            if written < length:  # a short write (a full disk, a signal): the rest
                line = b"".join(parts)
                while written < length:
                    written += os.write(segment.fd, line[written:])
            if self.fsync == "always":
                os.fdatasync(segment.fd)
        except OSError as exc:
            self.failed = exc
            with contextlib.suppress(OSError):  # no half line before the next one
                os.ftruncate(segment.fd, start)
            raise

    def _rotate(self, length: int) -> WrittenSegment:
        """Retire the live segment for a fresh one whose twin holds at least ``length``."""
        assert self.live is not None
        fresh = self._new_segment(length)
        retired, self.live = self.live, fresh
        if retired.memory is not None:
            retired.memory.close()
            retired.memory = None
        self.retired.append(retired)
        return fresh

    @property
    def segments(self) -> list[WrittenSegment]:
        """This process's segments, oldest first."""
        return [*self.retired, *([self.live] if self.live else [])]

    def release(self, name: str) -> None:
        """The delivery process removed retired segment ``name``: close it."""
        for segment in self.retired:
            if segment.path.name == name:
                self.retired.remove(segment)
                os.close(segment.fd)
                return

    def close(self) -> None:
        """Close the segments, once the delivery process has stopped: what it left in memory
        twins (not delivered within the shutdown deadline) is copied to the disk segments, so
        a stopped gateway leaves nothing in shared memory."""
        segments, self.retired, self.live = self.segments, [], None
        for segment in segments:
            if segment.memory is not None:
                segment.memory.close()
            with contextlib.suppress(OSError):
                if self.staging is not None and segment.path.exists():
                    self._copy_out(segment)
                if self.fsync != "never" and segment.path.exists():
                    os.fdatasync(segment.fd)
            os.close(segment.fd)
        if self.staging is not None:
            with contextlib.suppress(OSError):
                for twin in self.staging.glob(f"*-{os.getpid()}.spool"):
                    if not (self.directory / twin.name).exists():  # its records delivered
                        log.warning("records: %s outlived its delivered segment: removed", twin)
                        twin.unlink()
                self.staging.rmdir()

    def _copy_out(self, segment: WrittenSegment) -> None:
        assert self.staging is not None
        try:
            pump = Pump(self.staging / segment.path.name, segment.path)
        except FileNotFoundError:  # no twin (the delivery process finished it)
            return
        pump.finish(writer_alive=True)
