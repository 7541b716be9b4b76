"""Spool staging in shared memory: the request path writes a record with a ``memcpy``.

With ``spool_memory_dir`` set (``/dev/shm`` by default) and ``spool_fsync`` other than
``always``, each spool segment has a twin in a tmpfs directory of its own
(:func:`staging_dir`): a file of :data:`MEMORY_SEGMENT_BYTES`, allocated and mapped when the
segment is started (:class:`MemorySegment`). The gateway writes each record's line into that
mapping — no system call on the request path, which on virtual machines costs far more than the
copy. A tmpfs file outlives the processes that wrote it: once the copy returns, the record
survives ``kill -9`` of the gateway and of its delivery process alike, exactly as a line written
to the disk segment does (the page cache is not disk either).

The disk segment of the same name stays what it was — the gateway creates it, holds its lock
for as long as it lives, and the delivery process reads it and delivers from it — except that
the delivery process writes it: every time it looks at the spool it copies the complete lines
the memory twin has gained to the disk segment (:class:`Pump`), then fsyncs it (``spool_fsync =
"batch"``). So a power loss takes what the last ``flush_interval_s`` took before, and a record
reaches the disk as it did, only written by the other process. A segment whose writer died is
pumped to the end by whoever adopts it, and its twin removed; after a reboot there is no twin,
and the disk segment holds everything that had been fsynced.

A line is whole when it ends in a newline and its crc32 matches: a reader may see the bytes of
a copy in any order, and a twin's unwritten part is zeros (no line starts with one).

The staging directory is the gateway user's, mode ``0700``, its twins ``0600``: one that another
user could have prepared (not owned by the gateway's user, or writable by group or others: see
:func:`gateway.kernel.files.check_private_dir`) is refused — the gateway writes its spool
directly and its delivery process reads no twin from it.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import mmap
import os
import zlib
from pathlib import Path

from gateway.kernel.errors import UnsafePathError
from gateway.kernel.files import FILE_MODE, check_private_dir

log = logging.getLogger("tiergate.records.spool")

MEMORY_SEGMENT_BYTES = 8 << 20
"""The size of a memory twin by default (a record longer than this gets one of its size)."""
_CHUNK = 64 << 10
"""What the pump reads at a time: under malloc's mmap threshold, so a look that finds nothing
new does not fault in a fresh buffer (which on a VM costs more than the copy)."""


def staging_dir(spool_dir: Path, memory_dir: Path) -> Path:
    """The directory under ``memory_dir`` for the spool at ``spool_dir`` (one per spool)."""
    digest = hashlib.sha256(str(spool_dir.resolve()).encode()).hexdigest()[:16]
    return memory_dir / f"tiergate-spool-{digest}"


class TrustedDir:
    """A staging directory as its reader sees it: used once it exists and is private (see the
    module docs), never when it is refused (logged once)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._trusted: bool | None = None

    def get(self) -> Path | None:
        """The directory, or ``None``: it does not exist (yet), or it is refused."""
        if self._trusted is None:
            if not os.path.lexists(self.path):
                return None
            try:
                check_private_dir(self.path)
                self._trusted = True
            except UnsafePathError as exc:
                log.error("records: no records are read from the staging directory: %s", exc)
                self._trusted = False
        return self.path if self._trusted else None


class MemorySegment:
    """The gateway's side of a memory twin: a mapping it copies lines into."""

    def __init__(self, path: Path, capacity: int) -> None:
        self.path = path
        self.capacity = capacity
        self.size = 0
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, FILE_MODE)
        try:
            os.posix_fallocate(fd, 0, capacity)  # the pages exist: no SIGBUS on a full tmpfs
            self._map = mmap.mmap(fd, capacity, flags=mmap.MAP_SHARED | mmap.MAP_POPULATE)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                path.unlink()
            raise
        os.close(fd)  # the mapping keeps the file

    def write(self, parts: tuple[bytes, bytes, bytes]) -> bool:
        """Copy one line (:func:`gateway.records.spool.line_parts`); ``False`` if it does not
        fit."""
        start = self.size
        end = start + len(parts[0]) + len(parts[1]) + len(parts[2])
        if end > self.capacity:
            return False
        self._map[start:end] = b"".join(parts)
        self.size = end
        return True

    def close(self) -> None:
        """Unmap (the file stays until the delivery process has copied it)."""
        self._map.close()


def whole_lines(data: bytes) -> int:
    """The length of the longest prefix of ``data`` made of whole spool lines."""
    position, size = 0, len(data)
    while position < size and data[position] != 0:
        end = data.find(b"\n", position)
        if end < 0 or data[position + 8:position + 9] != b" ":
            break
        try:
            if int(data[position:position + 8], 16) != zlib.crc32(data[position + 9:end]):
                break
        except ValueError:
            break
        position = end + 1
    return position


class Pump:
    """The delivery side of a memory twin: copies its whole lines to the disk segment."""

    def __init__(self, memory: Path, disk: Path) -> None:
        self.memory = memory
        self._memory_fd = os.open(memory, os.O_RDONLY)
        try:
            self._disk_fd = os.open(disk, os.O_RDWR | os.O_APPEND)
        except BaseException:
            os.close(self._memory_fd)
            raise
        self.offset = _cut_to_whole_lines(self._disk_fd)
        """Bytes copied so far: the disk segment is the twin's first ``offset`` bytes."""

    def run(self) -> int:
        """Copy what the twin gained; the bytes copied."""
        copied = 0
        while True:
            data = os.pread(self._memory_fd, _CHUNK, self.offset)
            whole = whole_lines(data)
            if whole == 0 and len(data) == _CHUNK and data[0] != 0 and b"\n" not in data:
                data = os.pread(self._memory_fd, os.fstat(self._memory_fd).st_size,
                                self.offset)  # one line longer than a chunk
                whole = whole_lines(data)
            if whole == 0:
                return copied
            self._append(memoryview(data)[:whole])
            copied += whole

    def _append(self, data: memoryview) -> None:
        written = 0
        try:
            while written < len(data):
                written += os.write(self._disk_fd, data[written:])
        except OSError:
            with contextlib.suppress(OSError):  # no half line before the next try
                os.ftruncate(self._disk_fd, self.offset)
            raise
        self.offset += written

    def finish(self, writer_alive: bool) -> None:
        """The twin is complete (its writer moved on, stopped or died): copy the rest, remove
        it. A line its dead writer left half copied had no response."""
        self.run()
        if not writer_alive and os.pread(self._memory_fd, 1, self.offset) not in (b"", b"\0"):
            log.warning("spool %s: a record cut short by a crash discarded", self.memory)
        with contextlib.suppress(FileNotFoundError):
            self.memory.unlink()
        self.close()

    def close(self) -> None:
        for fd in (self._memory_fd, self._disk_fd):
            with contextlib.suppress(OSError):
                os.close(fd)


def _cut_to_whole_lines(fd: int) -> int:
    """Truncate a disk segment after its last newline (a copy a crash cut short); its size."""
    size = end = os.fstat(fd).st_size
    keep = 0
    while end > 0:
        start = max(0, end - 65536)
        newline = os.pread(fd, end - start, start).rfind(b"\n")
        if newline >= 0:
            keep = start + newline + 1
            break
        end = start
    if keep != size:
        os.ftruncate(fd, keep)
    return keep
