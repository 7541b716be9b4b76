"""The recorder: the completion listener that makes every answered request a stored record.

On the request path the gateway process builds the record and writes it to the local spool:
its head (input, client parameters) while the model works (:meth:`Recorder.started`, scheduled by
serving once the model call waits), the rest and the write when the answer is complete (the
listener, called by serving before the response's last bytes go out): a copy into the spool's
shared-memory staging (:mod:`gateway.records.staging`), or one ``writev(2)`` to the disk spool
(and an ``fdatasync`` with ``spool_fsync = "always"``). That is all the gateway process does
with it.

Delivery to the store is the job of a process of its own (:mod:`gateway.records.delivery`),
started and watched by the recorder: it reads the spool, links the records into the hash chain
and appends them to the store in batches, so that work never holds this process's GIL. Its
status (bytes delivered per segment, the store's error) comes back over a pipe; from it
:meth:`Recorder.admit` refuses new requests (503) once the spool holds more than
``spool_max_bytes`` undelivered, instead of dropping anything. If the delivery process dies it is
started again; records wait in the spool meanwhile. :meth:`Recorder.aclose` lets it deliver what
is left (graceful shutdown); what the store could not take stays in the spool for the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.kernel.errors import ServiceUnavailableError
from gateway.kernel.secrets import redact, redact_error
from gateway.listener import CompletedRequest, RequestContext, RequestListener
from gateway.records.builder import TupleCache, encode_record, prepare_head
from gateway.records.control import Command, DeliveryStatus, StartOptions
from gateway.records.settings import RecordsSettings
from gateway.records.sinks import create_sink
from gateway.records.sinks.base import RecordSink
from gateway.records.spool import Spool

if TYPE_CHECKING:
    from gateway.kernel.generation import GenerationRequest
    from gateway.protocol import OpenAIRequest

log = logging.getLogger("tiergate.records")

RESTART_DELAY_S = 1.0
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])


class Recorder(RequestListener):
    """Listener + delivery process. ``await start()``, ``serving.add_listener(recorder)``,
    ``await aclose()``."""

    name = "records"

    def __init__(self, settings: RecordsSettings, shutdown_timeout_s: float = 10.0) -> None:
        self.settings = settings
        self.shutdown_timeout_s = shutdown_timeout_s
        self.spool = Spool(settings.spool_dir, settings.spool_fsync,
                           settings.spool_memory_dir if settings.spool_staging == "memory"
                           else None)
        self._tuples = TupleCache()
        self._process: asyncio.subprocess.Process | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._stopping = False
        self._since_wake = 0
        self._backlog_at_status = 0
        self._written_at_status = 0
        self._delivered_before = 0
        self._reader: RecordSink | None = None
        self.recorded = 0
        """Records written to the spool by this process."""
        self.delivered = 0
        """Records of this process the store took."""
        self.sink_error: str | None = None
        """Why the store is failing, until it takes records again."""

    @property
    def pending(self) -> int:
        """Records this process spooled that the store has not taken yet."""
        return max(0, self.recorded - self.delivered)

    @property
    def backlog(self) -> int:
        """Bytes in the spool the store does not have (this process's and adopted ones): as of
        the delivery process's last status, plus what was written since."""
        return self._backlog_at_status + self.spool.written - self._written_at_status

    # -- lifecycle (on the server's event loop) --------------------------------------------

    async def start(self) -> None:
        await asyncio.to_thread(self.spool.open)
        await self._spawn()
        self._watcher = asyncio.create_task(self._watch())

    async def _spawn(self) -> None:
        # The package as this process imported it, installed or not.
        path = os.pathsep.join(p for p in (_PACKAGE_ROOT, os.environ.get("PYTHONPATH")) if p)
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway.records.delivery",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": path})
        assert process.stdin is not None
        options = StartOptions(self.settings, os.getpid(), self.shutdown_timeout_s,
                               logging.getLogger().getEffectiveLevel())
        process.stdin.write(options.encode())
        self._process = process

    async def _watch(self) -> None:
        """Apply the delivery process's status lines; start it again if it dies."""
        while True:
            process = self._process
            assert process is not None and process.stdout is not None
            while line := await process.stdout.readline():
                try:
                    self._apply(DeliveryStatus.decode(line))
                except ValueError as exc:
                    log.warning("records delivery process: %s", exc)
            code = await process.wait()
            if self._stopping:
                return
            # SIGTERM (before it could handle it) comes with the gateway's own, as a rule: a
            # group's stop (`timeout`, systemd), which aclose() completes.
            log.log(logging.WARNING if code == -signal.SIGTERM else logging.ERROR,
                    "the records delivery process exited (status %s): starting it again in "
                    "%.0f s; records wait in the spool meanwhile", code, RESTART_DELAY_S)
            self._delivered_before = self.delivered
            while True:
                await asyncio.sleep(RESTART_DELAY_S)
                if self._stopping:
                    return
                try:
                    await self._spawn()
                    break
                except OSError as exc:  # no fork, no memory: records keep waiting in the spool
                    log.error("cannot start the records delivery process: %s", exc)

    def _apply(self, status: DeliveryStatus) -> None:
        for name in status.removed:
            self.spool.release(name)
        self._written_at_status = self.spool.written
        self._backlog_at_status = status.recovering + sum(
            s.size - status.delivered.get(s.path.name, 0) for s in self.spool.segments)
        self.delivered = self._delivered_before + status.records
        self.sink_error = status.error

    def _signal(self, command: Command) -> None:
        process = self._process
        if process is not None and process.stdin is not None \
                and not process.stdin.is_closing():
            process.stdin.write(command.value)

    async def flush(self, wait_s: float = 10.0) -> bool:
        """Wait until the store has every record written so far; ``False`` after ``wait_s``."""
        deadline = time.monotonic() + wait_s
        while self.backlog > 0:
            self._signal(Command.WAKE)
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.005)
        return True

    async def aclose(self) -> None:
        """Let the delivery process deliver what is left (up to ``shutdown_timeout_s``)."""
        self._stopping = True
        await self._stop(self._process)
        if self._watcher is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
            self._watcher = None
        await self._stop(self._process)  # one a restart started while we were stopping
        if self._process is not None and self._process.returncode != 0:
            # it died (a signal, a crash) instead of delivering what is left: one more does
            log.info("records: starting a delivery process to deliver what is spooled")
            try:
                await self._spawn()
            except OSError as exc:
                log.error("cannot start the records delivery process (records stay in the "
                          "spool for the next start): %s", exc)
            else:
                await self._stop(self._process)
        self.spool.close()
        reader, self._reader = self._reader, None
        if reader is not None:
            await reader.aclose()

    async def _stop(self, process: asyncio.subprocess.Process | None) -> None:
        if process is None or process.returncode is not None:
            return
        self._signal(Command.STOP)
        try:
            await asyncio.wait_for(process.wait(), self.shutdown_timeout_s + 5)
        except TimeoutError:
            log.error("the records delivery process did not stop: killed (its records stay in "
                      "the spool)")
            process.kill()
            await process.wait()
            return
        if process.returncode != 0:
            log.warning("the records delivery process stopped with status %s",
                        process.returncode)

    async def reader(self) -> RecordSink:
        """A store opened on the calling (server) loop, for the admin API."""
        if self._reader is None:
            sink = create_sink(self.settings)
            await sink.open()
            self._reader = sink
        return self._reader

    # -- the request path ----------------------------------------------------------------------

    def admit(self) -> None:
        """Refuse a new request (503) while records could not be kept: the spool is failing,
        or it holds more undelivered records than ``spool_max_bytes``. The client is told
        which, not the store's error (its address is the operator's business: the log and
        ``/health`` for admins have it)."""
        if self.spool.failed is not None:
            raise ServiceUnavailableError(
                "Requests are paused: decode records cannot be written "
                f"({self.spool.failed.strerror or 'spool error'}).", retry_after=5)
        backlog = self.backlog
        if backlog > self.settings.spool_max_bytes:
            raise ServiceUnavailableError(
                f"Requests are paused: the record store is {backlog} bytes behind "
                f"({'failing' if self.sink_error else 'slow'}).", retry_after=5)

    def health(self) -> dict[str, Any]:
        """The spool and the store as ``/health`` shows them to admins (errors redacted)."""
        return {"backlog_bytes": self.backlog, "spool_max_bytes": self.settings.spool_max_bytes,
                "pending_records": self.pending,
                "spool_error": None if self.spool.failed is None else redact_error(
                    self.spool.failed),
                "store_error": None if self.sink_error is None else redact(self.sink_error)}

    def headers(self, request: GenerationRequest) -> dict[str, str]:
        return {"x-tiergate-record-id": request.request_id}

    def started(self, ctx: RequestContext, client_request: OpenAIRequest,
                request: GenerationRequest) -> None:
        """Build the record's head while the model works."""
        prepare_head(ctx, client_request, request, self.settings.redact)

    def completed(self, done: CompletedRequest) -> None:
        self.submit(encode_record(done, self._tuples, self.settings.redact))

    def submit(self, record: bytes) -> None:
        """Spool one record (its canonical JSON); wake the delivery process once a batch is
        waiting."""
        self.spool.append(record)
        self.recorded += 1
        self._since_wake += 1
        if self._since_wake >= self.settings.batch_size:
            self._since_wake = 0
            self._signal(Command.WAKE)
