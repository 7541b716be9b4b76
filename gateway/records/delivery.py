"""The records delivery process: moves spooled records into the store, off the gateway process.

Each gateway process starts one (:class:`gateway.records.recorder.Recorder`) and talks to it over
two pipes. Its stdin carries one JSON line of start-up options, then commands: ``w`` (records are
waiting: deliver now), ``s`` (the gateway is stopping: deliver what is left within the shutdown
deadline, then exit); end of file means the gateway died, and it exits at once (the next process
on the spool adopts what is left). Signals do not stop it: SIGINT and SIGTERM reach the whole
process group, the gateway with it, and the gateway decides when delivery stops (SIGTERM makes it
deliver what is spooled at once). Its stdout carries JSON status lines: how many bytes of each of
the gateway's segments the store has, the records delivered, the bytes of adopted segments still
to deliver, and the store's error if it is failing. A line goes out at once when the store fails
or comes back or a segment is removed; progress at most once a second unless the gateway asked
(``w``), since every line wakes the gateway's event loop.

Being a process of its own, the store's work (parsing, hashing the chain, SQLite or Redis) never
holds the gateway's GIL: a request never waits behind a batch.

It delivers, in order: segments adopted at start (their writer died: the lock is free), then the
gateway's own segments, oldest first. It looks at the spool every ``flush_interval_s`` and, with
``spool_fsync = "batch"``, fsyncs the gateway's segment if it grew (the durability window). The
gateway's records go to the store in batches of up to ``batch_size``, one transaction each, every
``store_interval_s``, or at once when the gateway asks (a full batch is waiting, a flush, a stop):
a transaction has a fixed cost (a commit, an fsync) that a few records a cycle would each pay in
full. A failing store is retried with backoff, records wait in the spool.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import signal
import time
from pathlib import Path
from typing import BinaryIO

from gateway.kernel import secrets
from gateway.kernel.errors import TiergateError
from gateway.records.control import Command, DeliveryStatus, StartOptions
from gateway.records.settings import RecordsSettings
from gateway.records.sinks import create_sink, signer_for
from gateway.records.sinks.base import RecordSink
from gateway.records.spool import Segment, SpoolEntry, writer_pid
from gateway.records.staging import Pump, TrustedDir, staging_dir

log = logging.getLogger("tiergate.records.delivery")

PRUNE_EVERY_S = 3600.0
REPORT_EVERY_S = 1.0
"""Progress is reported at most this often unless the gateway asks (``w``: it is flushing or a
batch is waiting): every status line wakes the gateway's event loop."""
RESCAN_EVERY_S = 1.0
"""How often the spool directory is listed for the gateway's new segments (it starts one
every 64 MiB)."""
ADOPT_WAIT_S = 2.0
"""How long to wait for a dead writer's segment that is still locked (its own delivery
process finishing a batch) before leaving it to the next start."""


class Alarm:
    """Sleep until a deadline or until :meth:`set`, whichever comes first. One timer and one
    future per sleep: ``asyncio.wait_for(event.wait(), t)`` makes a task and takes several turns
    of the loop, which an idle process doing this every ``flush_interval_s`` pays in full."""

    def __init__(self) -> None:
        self._set = False
        self._waiter: asyncio.Future[None] | None = None

    def set(self) -> None:
        self._set = True
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def sleep(self, seconds: float) -> None:
        """Return after ``seconds``, or at once when set (since the last sleep)."""
        if not self._set:
            loop = asyncio.get_running_loop()
            self._waiter = waiter = loop.create_future()
            timer = loop.call_later(seconds, _settle, waiter)
            try:
                await waiter
            finally:
                timer.cancel()
                self._waiter = None
        self._set = False


def _settle(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _alive(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Delivery:
    """The delivery loop of one gateway process (``writer``: its pid)."""

    def __init__(self, settings: RecordsSettings, writer: int, shutdown_timeout_s: float,
                 status_fd: int = 1) -> None:
        self.settings = settings
        self.writer = writer
        self.shutdown_timeout_s = shutdown_timeout_s
        self.status_fd = status_fd
        self.signer = signer_for(settings)
        self.own: dict[str, Segment] = {}
        self.pumps: dict[str, Pump] = {}
        """Memory twins of the gateway's segments (:mod:`gateway.records.staging`)."""
        self._staging = TrustedDir(staging_dir(settings.spool_dir, settings.spool_memory_dir))
        self.adopted: list[Segment] = []
        self.records = 0
        """Records of the gateway's own segments delivered."""
        self.error: str | None = None
        self.removed: list[str] = []
        self.stopping = False
        self.released = False
        """The gateway said it is stopping (``s``): it writes no more to its segments. (A
        SIGTERM stops this process only: the gateway may still be finishing requests.)"""
        self.writer_gone = False
        self.wake = Alarm()
        self._synced: dict[str, int] = {}
        self._scanned = -RESCAN_EVERY_S
        self._reported = 0.0
        self._progress = False
        self.asked = False
        """The gateway asked for delivery (``w``): report progress at once."""
        self.store_now = False
        """Deliver the gateway's records without waiting for ``store_interval_s`` (it asked, or
        a batch went out and more may be waiting)."""

    # -- segments --------------------------------------------------------------------------------

    def adopt(self) -> None:
        """Lock and queue every segment whose writer is gone (not the gateway's own)."""
        staging = self.staging
        with contextlib.suppress(OSError):  # twins whose writer died before making the segment
            for twin in staging.glob("*.spool") if staging is not None else []:
                if not (self.settings.spool_dir / twin.name).exists() \
                        and not _alive(writer_pid(twin)):
                    with contextlib.suppress(FileNotFoundError):
                        twin.unlink()
        for path in sorted(self.settings.spool_dir.glob("*.spool")):
            segment = self._lock(path)
            if segment is not None:
                self.adopted.append(segment)
        if self.adopted:
            log.warning("spool %s: recovering %d bytes of records from segments of stopped "
                        "processes: %s", self.settings.spool_dir, self.recovering,
                        ", ".join(s.path.name for s in self.adopted))

    def _lock(self, path: Path) -> Segment | None:
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            return None
        waited_until = time.monotonic() + ADOPT_WAIT_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:  # a live writer, or a dead one's delivery finishing
                if _alive(writer_pid(path)) or time.monotonic() >= waited_until:
                    os.close(fd)
                    return None
                time.sleep(0.02)
        if not path.exists():  # delivered and removed by its owner meanwhile
            os.close(fd)
            return None
        twin = self._twin(path.name)
        if twin is not None and twin.exists():
            try:
                pump = Pump(twin, path)
            except FileNotFoundError:
                pass
            else:
                pump.finish(writer_alive=False)
                if self.settings.spool_fsync != "never":
                    os.fdatasync(fd)
        return Segment.of(path, fd)

    @property
    def staging(self) -> Path | None:
        """Where twins are (also with ``spool_staging = "disk"``: a previous run's, to adopt);
        ``None``: there is none yet, or it is not private (refused: no twin is read from it)."""
        return self._staging.get()

    def _twin(self, name: str) -> Path | None:
        staging = self.staging
        return None if staging is None else staging / name

    def pump(self) -> None:
        """Copy what the memory twins of the gateway's segments gained to the disk segments;
        finish (copy out and remove) the twins of segments the gateway has moved on from."""
        segments = self.own_segments()
        for index, segment in enumerate(segments):
            pump = self.pumps.get(segment.path.name) or self._pump_for(segment.path)
            if pump is not None:
                if index < len(segments) - 1 or self.released:  # it writes no more there
                    pump.finish(writer_alive=True)
                    del self.pumps[segment.path.name]
                else:
                    pump.run()

    def own_segments(self) -> list[Segment]:
        """The gateway's segments, oldest first (a newer one means the older are complete)."""
        now = time.monotonic()
        # Once the gateway stopped, every look: it may have started one since the last.
        if not self.own or self.released or now - self._scanned >= RESCAN_EVERY_S:
            self._scanned = now
            adopted = {s.path.name for s in self.adopted}
            for path in sorted(self.settings.spool_dir.glob(f"*-{self.writer}.spool")):
                if path.name not in self.own and path.name not in adopted:
                    with contextlib.suppress(FileNotFoundError):
                        self.own[path.name] = Segment.open(path)
        return [self.own[name] for name in sorted(self.own)]

    def _pump_for(self, path: Path) -> Pump | None:
        """A pump for the gateway's segment ``path`` if it has a twin (made before it)."""
        twin = self._twin(path.name)
        if twin is None or not twin.exists():
            return None
        try:
            pump = self.pumps[path.name] = Pump(twin, path)
        except FileNotFoundError:  # finished and removed meanwhile
            return None
        return pump

    @property
    def recovering(self) -> int:
        return sum(s.backlog for s in self.adopted)

    def backlog(self) -> int:
        self.pump()
        return self.recovering + sum(s.refresh() for s in self.own.values())

    def sync(self) -> None:
        """fsync the gateway's segments that grew since the last sync (their twins copied
        first)."""
        self.pump()
        for name, segment in list(self.own.items()):
            segment.refresh()
            size = segment.size
            if self._synced.get(name) != size:
                segment.sync()
                self._synced[name] = size

    # -- delivering ------------------------------------------------------------------------------

    async def deliver(self, sink: RecordSink, own: bool = True) -> bool:
        """Deliver one batch — of an adopted segment, else (when ``own``) of the gateway's —;
        ``False`` when there was nothing to deliver."""
        size = self.settings.batch_size
        while self.adopted:
            segment = self.adopted[0]
            if segment.delivered < segment.size:
                entries = segment.read(segment.delivered, size)
                if entries:
                    await self._store(sink, segment, entries, own=False)
                    return True
                # A line cut short when its process died: its write never returned, so no
                # response was sent for it.
                log.warning("spool %s: %d bytes of a record cut short by a crash discarded",
                            segment.path, segment.backlog)
            segment.remove()
            self.adopted.pop(0)
            self.report()
        if not own:
            return False
        self.pump()
        segments = self.own_segments()
        for index, segment in enumerate(segments):
            complete = index < len(segments) - 1  # decided before the size is read
            if segment.refresh() > 0:
                entries = segment.read(segment.delivered, size)
                if entries:
                    await self._store(sink, segment, entries, own=True)
                    return True
                if not complete:
                    return False  # a line being written
            if complete:
                if segment.path.name in self.pumps:
                    return False  # the rest of its twin is copied first (at the next look)
                self._remove_own(segment)
        return False

    async def _store(self, sink: RecordSink, segment: Segment, entries: list[SpoolEntry],
                     own: bool) -> None:
        records = [e.record for e in entries if e.record is not None]
        if records:
            await sink.append(self.settings.chain_id, records, self.signer,
                              self.settings.checkpoint_every)
        segment.mark_delivered(entries[-1].end)
        if own:
            self.records += len(records)
        if self.error is not None:
            log.warning("record store is back: delivering %d bytes of spooled records",
                        self.backlog())
            self.error = None
            self.report()
        self._progress = True

    def _remove_own(self, segment: Segment) -> None:
        pump = self.pumps.pop(segment.path.name, None)
        if pump is not None:
            pump.finish(writer_alive=True)
        segment.remove()
        del self.own[segment.path.name]
        self._synced.pop(segment.path.name, None)
        self.removed.append(segment.path.name)
        self.report()

    def failed(self, message: str) -> None:
        message = secrets.redact(message)  # it goes to the log, and to clients in 503s
        if self.error != message:
            log.error("record store failed (records stay in the spool and are delivered "
                      "when it is back): %s", message)
            self.error = message
            self.report()

    def report_progress(self) -> None:
        """Report delivered records if the gateway asked, or the last report is old enough."""
        if self._progress and (self.asked or
                               time.monotonic() - self._reported >= REPORT_EVERY_S):
            self.report()

    def report(self) -> None:
        self._progress = self.asked = False
        self._reported = time.monotonic()
        status = DeliveryStatus({name: s.delivered for name, s in self.own.items()},
                                self.records, self.recovering, self.error, self.removed)
        self.removed = []
        try:
            os.write(self.status_fd, status.encode())
        except BrokenPipeError:  # the gateway is gone
            self.writer_gone = True
            self.wake.set()

    # -- the loop --------------------------------------------------------------------------------

    async def run(self) -> None:
        settings = self.settings
        self.adopt()
        self.own_segments()
        self.report()
        if not self.adopted:
            # The first look at the gateway's spool comes ``flush_interval_s`` after start, like
            # every look after (or sooner when it asks), not whenever this process is ready.
            await self.wake.sleep(settings.flush_interval_s)
        sink = create_sink(settings, in_thread=False)
        opened, backoff = False, 0.05
        last_sync = last_prune = time.monotonic() - PRUNE_EVERY_S
        next_store = time.monotonic()
        deadline: float | None = None
        try:
            while not self.writer_gone:
                now = time.monotonic()
                if self.stopping and deadline is None:
                    # A store that is down does not hold the shutdown up: the records are safe
                    # in the spool and go to the store at the next start.
                    deadline = now + (0 if self.error else self.shutdown_timeout_s)
                if deadline is not None and (now >= deadline or self.backlog() == 0):
                    break
                try:
                    if settings.spool_fsync == "batch" and \
                            now - last_sync >= settings.flush_interval_s:
                        last_sync = now
                        self.sync()
                    if not opened:
                        await sink.open()
                        opened = True
                    if settings.retention_days and now - last_prune >= PRUNE_EVERY_S:
                        last_prune = now
                        await self._prune(sink)
                    due = self.store_now or self.stopping or now >= next_store
                    self.store_now = False
                    delivered = await self.deliver(sink, own=due)
                    self.report_progress()
                    if delivered:
                        backoff = 0.05
                        # drain what is waiting before the next pause (keeping a request
                        # that came in meanwhile)
                        self.store_now = self.store_now or due
                        continue
                    if due:
                        next_store = now + settings.store_interval_s
                except TiergateError as exc:
                    self.failed(str(exc.message))
                except Exception as exc:  # a store's unexpected failure: retried, logged
                    self.failed(f"{type(exc).__name__}: {exc}")
                else:
                    await self.wake.sleep(settings.flush_interval_s)
                    continue
                await self.wake.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
        finally:
            self.close()
            if opened:
                await sink.aclose()

    def close(self) -> None:
        """Close the segments; after the gateway's stop, remove its drained ones (it writes no
        more) so a clean shutdown leaves an empty spool."""
        for segment in self.adopted:
            segment.close()
        if self.released and not self.writer_gone:
            with contextlib.suppress(OSError):  # what is not copied waits for the next start
                self.pump()
        for pump in self.pumps.values():
            pump.close()
        self.pumps.clear()
        for segment in list(self.own.values()):
            if self.released and not self.writer_gone and segment.refresh() == 0:
                self._remove_own(segment)
            else:
                segment.close()
        if not self.writer_gone:
            self.report()

    async def _prune(self, sink: RecordSink) -> None:
        days = self.settings.retention_days
        assert days is not None
        removed = await sink.prune(self.settings.chain_id, time.time() - days * 86400,
                                   self.signer)
        if removed:
            log.info("records: %d records older than %s days pruned", removed, days)

    async def read_commands(self, reader: asyncio.StreamReader) -> None:
        while data := await reader.read(256):
            if Command.STOP.value in data:
                self.stopping = self.released = True
            self.asked = self.store_now = True
            self.wake.set()
        self.writer_gone = True
        self.wake.set()


async def _main(stdin: BinaryIO) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), stdin)
    line = await reader.readline()
    if not line:
        return
    options = StartOptions.decode(line)
    logging.basicConfig(level=options.log_level,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    secrets.install()
    secrets.register_settings(options.settings)
    delivery = Delivery(options.settings, options.writer, options.shutdown_timeout_s)

    def deliver_now() -> None:
        delivery.asked = delivery.store_now = True
        delivery.wake.set()

    # SIGTERM reaches the whole process group (`timeout`, systemd, a shell's kill of a job): the
    # gateway stops too and says when delivery stops (``s``, after its last record); until then
    # this process delivers what is spooled at once rather than stopping under it.
    loop.add_signal_handler(signal.SIGTERM, deliver_now)
    commands = asyncio.create_task(delivery.read_commands(reader))
    try:
        await delivery.run()
    finally:
        commands.cancel()


def main() -> None:
    # Ctrl-C and SIGTERM reach the whole process group: the gateway decides when delivery stops
    # (SIGTERM is handled once the loop runs; until then it is ignored, not fatal).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    with open(0, "rb", buffering=0, closefd=False) as stdin:
        asyncio.run(_main(stdin))


if __name__ == "__main__":
    main()
