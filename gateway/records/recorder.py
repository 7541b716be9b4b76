"""The recorder: the completion listener that makes every answered request a stored record.

On the request path (the listener, called by serving before the response's last bytes go out)
it builds the record, writes it to the local spool with one ``write(2)`` (and an ``fdatasync``
with ``spool_fsync = "always"``) and hands it to the writer. Nothing there waits on the store.

The writer is a thread with its own event loop. It takes records in spool order — from memory
while it keeps up, from the spool file when it does not (more than ``queue_bound`` waiting, or
segments recovered from a process that died) — and appends them to the store in batches of up
to ``batch_size``, at least every ``flush_interval_s``. When the store is down or slow, records
wait in the spool and are delivered later in order; when the spool holds more than
``spool_max_bytes`` undelivered, :meth:`Recorder.admit` refuses new requests (503) instead of
dropping anything. :meth:`Recorder.aclose` delivers what is left (graceful shutdown); what the
store could not take stays in the spool for the next start.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from gateway.errors import ServiceUnavailableError, TiergateError
from gateway.records.builder import TupleCache, build_record
from gateway.records.schema import canonical_json
from gateway.records.settings import RecordsSettings
from gateway.records.sinks import create_sink, signer_for
from gateway.records.sinks.base import PendingRecord, RecordSink
from gateway.records.spool import Segment, Spool, SpoolEntry

if TYPE_CHECKING:
    from gateway.serving import CompletedRequest

log = logging.getLogger("tiergate.records")

SEGMENT_BYTES = 16 << 20
"""A drained live spool segment of this size or more is replaced by a fresh one."""
PRUNE_EVERY_S = 3600.0


class Recorder:
    """Listener + writer. ``await start()``, append to ``serving.listeners``, ``await aclose()``."""

    def __init__(self, settings: RecordsSettings,
                 sink_factory: Callable[[RecordsSettings], RecordSink] = create_sink,
                 shutdown_timeout_s: float = 10.0) -> None:
        self.settings = settings
        self.sink_factory = sink_factory
        self.shutdown_timeout_s = shutdown_timeout_s
        self.spool = Spool(settings.spool_dir, settings.spool_fsync)
        self.signer = signer_for(settings)
        self._tuples = TupleCache()
        self._pending: collections.deque[SpoolEntry] = collections.deque()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._ready = threading.Event()
        self._stopping = False
        self._reader: RecordSink | None = None
        self.recorded = 0
        """Records written to the spool by this process."""
        self.delivered = 0
        """Records the store took from this process (recovered ones included)."""
        self.sink_error: str | None = None
        """Why the last append failed, until one succeeds."""

    @property
    def pending(self) -> int:
        """Records this process spooled that the store has not taken yet."""
        return max(0, self.recorded - self.delivered)

    # -- lifecycle (on the server's event loop) --------------------------------------------

    async def start(self) -> None:
        await asyncio.to_thread(self.spool.open)
        self._thread = threading.Thread(target=self._thread_main, name="tiergate-records",
                                        daemon=True)
        self._thread.start()
        await asyncio.to_thread(self._ready.wait)

    async def flush(self, wait_s: float = 10.0) -> bool:
        """Wait until the store has every record written so far; ``False`` after ``wait_s``."""
        deadline = time.monotonic() + wait_s
        while self.spool.backlog > 0:
            self._signal()
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.005)
        return True

    async def aclose(self) -> None:
        """Deliver what is left (up to ``shutdown_timeout_s``), stop the writer."""
        self._stopping = True
        self._signal()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)
            self._thread = None
        reader, self._reader = self._reader, None
        if reader is not None:
            await reader.aclose()

    async def reader(self) -> RecordSink:
        """A store opened on the calling (server) loop, for the admin API."""
        if self._reader is None:
            sink = self.sink_factory(self.settings)
            await sink.open()
            self._reader = sink
        return self._reader

    # -- the request path ----------------------------------------------------------------------

    def admit(self) -> None:
        """Refuse a new request (503) while records could not be kept: the spool is failing,
        or it holds more undelivered records than ``spool_max_bytes``."""
        if self.spool.failed is not None:
            raise ServiceUnavailableError(
                f"Requests are paused: decode records cannot be written ({self.spool.failed}).",
                retry_after=5)
        backlog = self.spool.backlog
        if backlog > self.settings.spool_max_bytes:
            raise ServiceUnavailableError(
                f"Requests are paused: the record store is {backlog} bytes behind "
                f"({self.sink_error or 'slow'}).", retry_after=5)

    def __call__(self, done: CompletedRequest) -> None:
        record = build_record(done, self._tuples, self.settings.redact)
        self.submit(record)

    def submit(self, record: dict[str, Any]) -> None:
        """Spool one built record and queue it for the store."""
        body = canonical_json(record)
        entry = self.spool.append(body, PendingRecord.of(record, body))
        self.recorded += 1
        pending = self._pending
        if len(pending) < self.settings.queue_bound:
            pending.append(entry)
            if len(pending) == self.settings.batch_size:
                self._signal()

    def _signal(self) -> None:
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the writer's loop just closed
                loop.call_soon_threadsafe(wake.set)

    # -- the writer thread ---------------------------------------------------------------------

    def _thread_main(self) -> None:
        try:
            asyncio.run(self._write_loop())
        except Exception:
            log.exception("records writer stopped")
        finally:
            self._ready.set()

    def _next_batch(self) -> tuple[Segment | None, list[SpoolEntry]]:
        spool, size = self.spool, self.settings.batch_size
        while spool.recovered:
            segment = spool.recovered[0]
            if segment.delivered < segment.size:
                entries = segment.read(segment.delivered, size)
                if entries:
                    return segment, entries
                # A line cut short when its process died: its write never returned, so no
                # response was sent for it.
                log.warning("spool %s: %d bytes of a record cut short by a crash discarded",
                            segment.path, segment.size - segment.delivered)
            segment.remove()
            spool.recovered.pop(0)
        live = spool.live
        if live is None:
            return None, []
        pending = self._pending
        while pending and (pending[0].segment is not live or pending[0].start < live.delivered):
            pending.popleft()
        if pending and pending[0].start == live.delivered:
            batch, expected = [], live.delivered
            for i in range(min(len(pending), size)):
                entry = pending[i]
                if entry.segment is not live or entry.start != expected:
                    break
                batch.append(entry)
                expected = entry.end
            return live, batch
        if live.delivered < live.size:
            return live, live.read(live.delivered, size)
        return live, []

    async def _write_loop(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._ready.set()
        sink = self.sink_factory(self.settings)
        opened, backoff = False, 0.05
        last_sync = last_prune = time.monotonic() - PRUNE_EVERY_S
        deadline: float | None = None
        try:
            while True:
                now = time.monotonic()
                if self._stopping and deadline is None:
                    # A store that is down does not hold the shutdown up: the records are safe
                    # in the spool and go to the store at the next start.
                    deadline = now + (0 if self.sink_error else self.shutdown_timeout_s)
                if deadline is not None and (now >= deadline or self.spool.backlog == 0):
                    break
                try:
                    if now - last_sync >= self.settings.flush_interval_s:
                        last_sync = now
                        await asyncio.to_thread(self.spool.sync)
                    if not opened:
                        await sink.open()
                        opened = True
                    if self.settings.retention_days and now - last_prune >= PRUNE_EVERY_S:
                        last_prune = now
                        await self._prune(sink)
                    if await self._deliver(sink):
                        backoff = 0.05
                        continue
                except TiergateError as exc:
                    self._failed(str(exc.message))
                except Exception as exc:  # a store's unexpected failure: retried, logged
                    self._failed(f"{type(exc).__name__}: {exc}")
                else:
                    self.spool.rotate_if_drained(SEGMENT_BYTES)
                    await self._sleep(self.settings.flush_interval_s)
                    continue
                await self._sleep(backoff)
                backoff = min(backoff * 2, 5.0)
        finally:
            self.spool.close()
            if opened:
                await sink.aclose()

    async def _deliver(self, sink: RecordSink) -> bool:
        """Deliver one batch; ``False`` when there was nothing to deliver."""
        segment, entries = self._next_batch()
        if segment is None or not entries:
            return False
        records = [e.record for e in entries if e.record is not None]
        if records:
            await sink.append(self.settings.chain_id, records, self.signer,
                              self.settings.checkpoint_every)
        segment.mark_delivered(entries[-1].end)
        self.delivered += len(records)
        if self.sink_error is not None:
            log.warning("record store is back: delivering %d bytes of spooled records",
                        self.spool.backlog)
            self.sink_error = None
        return True

    def _failed(self, message: str) -> None:
        if self.sink_error != message:
            log.error("record store failed (records stay in the spool and are delivered "
                      "when it is back): %s", message)
        self.sink_error = message

    async def _sleep(self, seconds: float) -> None:
        wake = self._wake
        assert wake is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wake.wait(), seconds)
        wake.clear()

    async def _prune(self, sink: RecordSink) -> None:
        days = self.settings.retention_days
        assert days is not None
        removed = await sink.prune(self.settings.chain_id, time.time() - days * 86400,
                                   self.signer)
        if removed:
            log.info("records: %d records older than %s days pruned", removed, days)
