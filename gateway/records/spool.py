"""The local append-only spool: every record is written here before its response is sent.

A spool is a directory of segment files, one being appended to by each running gateway process
(``<time>-<pid>.spool``, held with an exclusive ``flock``). A line is
``<crc32 of the JSON, 8 hex> <record JSON>\\n``, written with one ``writev(2)``: once the call
returns, the record survives the process dying (``kill -9`` included); with ``fsync`` it survives
the machine losing power. Beside each segment, ``<name>.delivered`` holds how many of its bytes
the store has (an optimisation: stores skip record ids they already have).

A segment whose process died (its lock is free) is *recovered* by the next process that opens
the spool: the writer delivers it, in order, before the records of its own segment.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import threading
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import orjson

from gateway.records.sinks.base import PendingRecord

log = logging.getLogger("tiergate.records.spool")

_READ_CHUNK = 4 << 20


def encode_line(body: bytes) -> bytes:
    return b"".join(line_parts(body))


def line_parts(body: bytes) -> tuple[bytes, bytes, bytes]:
    """A spool line in three pieces, written with one ``writev`` (no copy of the body)."""
    return b"%08x " % zlib.crc32(body), body, b"\n"


def decode_line(line: bytes) -> PendingRecord | None:
    """A spool line → the record, or ``None`` when it is damaged."""
    crc, _, body = line.partition(b" ")
    try:
        if int(crc, 16) != zlib.crc32(body):
            return None
        return PendingRecord.parse(body)
    except (ValueError, KeyError, TypeError, AttributeError, orjson.JSONDecodeError):
        return None


@dataclass(slots=True)
class SpoolEntry:
    segment: Segment
    start: int
    end: int
    record: PendingRecord | None
    """``None``: a damaged line (skipped, and logged)."""


class Segment:
    """One spool file and how much of it the store has."""

    def __init__(self, path: Path, fd: int, size: int, delivered: int, live: bool) -> None:
        self.path = path
        self.fd = fd
        self.size = size
        self.delivered = delivered
        self.live = live

    @property
    def marker(self) -> Path:
        return self.path.with_suffix(".delivered")

    @property
    def backlog(self) -> int:
        return self.size - self.delivered

    def read(self, offset: int, limit: int) -> list[SpoolEntry]:
        """Up to ``limit`` whole lines from ``offset`` (a line still being written is left)."""
        data = os.pread(self.fd, _READ_CHUNK, offset)
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
            entries.append(SpoolEntry(self, offset + position, offset + end + 1, record))
            position = end + 1
        return entries

    def mark_delivered(self, offset: int) -> None:
        self.delivered = offset
        try:
            fd = os.open(self.marker, os.O_WRONLY | os.O_CREAT, 0o644)
            try:
                os.pwrite(fd, b"%020d" % offset, 0)
            finally:
                os.close(fd)
        except OSError as exc:  # only an optimisation: the store deduplicates
            log.warning("spool %s: cannot write %s: %s", self.path, self.marker, exc)

    def remove(self) -> None:
        for path in (self.path, self.marker):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        os.close(self.fd)


def _delivered_of(marker: Path) -> int:
    try:
        return int(marker.read_bytes().strip() or b"0")
    except (OSError, ValueError):
        return 0


class Spool:
    """The spool directory: this process's live segment and the recovered ones."""

    def __init__(self, directory: Path, fsync: str = "batch") -> None:
        self.directory = directory
        self.fsync = fsync
        self.lock = threading.Lock()
        """Held while appending and while the live segment is swapped."""
        self.recovered: list[Segment] = []
        self.live: Segment | None = None
        self._dirty = False
        self.failed: OSError | None = None
        """The last append's error, until an append succeeds again."""

    def open(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.recovered = self._recover()
        self.live = self._new_segment()
        if self.recovered:
            log.warning("spool %s: recovering %d bytes of records from segments of stopped "
                        "processes: %s", self.directory,
                        sum(s.backlog for s in self.recovered),
                        ", ".join(s.path.name for s in self.recovered))

    def _recover(self) -> list[Segment]:
        segments = []
        for path in sorted(self.directory.glob("*.spool")):
            try:
                fd = os.open(path, os.O_RDWR)
            except FileNotFoundError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # a running process owns it
                os.close(fd)
                continue
            if not path.exists():  # delivered and removed by its owner meanwhile
                os.close(fd)
                continue
            size = os.fstat(fd).st_size
            marker = path.with_suffix(".delivered")
            segments.append(Segment(path, fd, size, min(_delivered_of(marker), size), False))
        return segments

    def _new_segment(self) -> Segment:
        name = f"{time.time_ns():020d}-{os.getpid()}"
        temporary = self.directory / f"{name}.tmp"
        fd = os.open(temporary, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)
        path = self.directory / f"{name}.spool"
        os.rename(temporary, path)  # visible to other processes only once locked
        return Segment(path, fd, 0, 0, True)

    def append(self, body: bytes, record: PendingRecord | None = None) -> SpoolEntry:
        """Write one record (its canonical JSON ``body``) to the live segment."""
        parts = line_parts(body)
        length = len(body) + 10
        with self.lock:
            segment = self.live
            assert segment is not None, "spool not open"
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
            self.failed = None
            segment.size = start + length
            self._dirty = True
            return SpoolEntry(segment, start, segment.size, record)

    def sync(self) -> None:
        """fsync the live segment if anything was appended since the last sync."""
        if self._dirty and self.live is not None and self.fsync != "never":
            self._dirty = False
            os.fdatasync(self.live.fd)

    @property
    def backlog(self) -> int:
        """Bytes written to the spool that the store does not have yet."""
        live = self.live.backlog if self.live is not None else 0
        return live + sum(s.backlog for s in self.recovered)

    def rotate_if_drained(self, threshold: int) -> bool:
        """Start a new live segment once the store has all of a segment of ``threshold``
        bytes or more, and delete the old one."""
        with self.lock:
            old = self.live
            if old is None or old.size < threshold or old.delivered != old.size:
                return False
            self.live = self._new_segment()
        old.remove()
        return True

    def close(self, remove_if_drained: bool = True) -> None:
        with self.lock:
            segments = [*self.recovered, *([self.live] if self.live else [])]
            self.recovered, self.live = [], None
        for segment in segments:
            if remove_if_drained and segment.backlog == 0:
                segment.remove()
            else:
                if self.fsync != "never":
                    os.fdatasync(segment.fd)
                os.close(segment.fd)
