"""Canary state per pinned model, and the store that keeps it.

:class:`ModelState` holds a pinned model's drift evidence (:class:`~canary.drift.DriftState`),
its standing alarm (until an operator acknowledges it) and past alarms. The store keeps, per
model, the current pin and older versions, that state, and the run history (newest last).

:class:`CanaryStore` is the interface; :class:`FileCanaryStore` keeps everything as JSON files
under ``canary.dir`` (atomic writes: a temporary file fsynced and renamed over the old one) and
serialises writers with an advisory file lock, so a CLI and a gateway sharing the directory do
not lose each other's updates. A store shared by replicas on different hosts (e.g. Redis) only
has to implement the same methods.

Layout of ``FileCanaryStore(dir)``, one directory per model (name percent-encoded)::

    <dir>/<model>/pin.json          the current pin (format 1)
    <dir>/<model>/pin-v0001.json    older pins, kept on repin
    <dir>/<model>/state.json        drift state, standing alarm, alarm history
    <dir>/<model>/runs.jsonl        the latest ``history`` runs, newest last
    <dir>/<model>/.lock             the writers' lock

Files are created ``0600`` and directories ``0700`` (:mod:`gateway.kernel.files`).
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import tempfile
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Literal, TypeVar
from urllib.parse import quote, unquote

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from canary.drift import DriftState, StreamAlarm
from canary.pins import Pin
from canary.runs import CanaryRun
from gateway.kernel.errors import ConfigError
from gateway.kernel.files import FILE_MODE, make_private_dir

ALARM_HISTORY = 20
_M = TypeVar("_M", bound=BaseModel)
AlarmSource = Literal["canary", "shadow", "tuple"]


class CanaryStoreError(ConfigError):
    """The canary store cannot be read or written (names the file)."""


class Alarm(BaseModel):
    """A drift alarm of a model: raised by a run, shadow batch or tuple change; stands until
    acknowledged."""

    model_config = ConfigDict(extra="forbid")

    raised_at: float
    source: AlarmSource
    run_id: str | None = None
    summary: str
    streams: list[StreamAlarm] = Field(default_factory=list)
    tuple_changes: dict[str, tuple[object, object]] = Field(default_factory=dict)
    acknowledged_at: float | None = None
    acknowledged_by: str | None = None
    metered: bool = False
    """Whether the process that raised it counted it in its ``tiergate_canary_alerts_total``
    (a gateway does; the CLI cannot: the gateway's leader counts it when it reads the store)."""

    @property
    def slices(self) -> list[str]:
        return [s.slice for s in self.streams if s.slice is not None]


class ModelState(BaseModel):
    """What the canaries know about one pinned model."""

    model_config = ConfigDict(extra="forbid")

    format: Literal[1] = 1
    model: str
    pin_version: int
    drift: DriftState
    alarm: Alarm | None = None
    """The standing (unacknowledged) alarm; None while the model is ok."""
    past_alarms: list[Alarm] = Field(default_factory=list)
    """Acknowledged alarms, newest last (at most 20)."""
    runs: int = 0
    last_run_at: float | None = None

    @property
    def status(self) -> Literal["ok", "drift"]:
        return "drift" if self.alarm is not None else "ok"

    def acknowledge(self, at: float, by: str | None) -> Alarm | None:
        """Close the standing alarm and restart the evidence; returns the closed alarm."""
        closed = self.alarm
        if closed is not None:
            closed.acknowledged_at, closed.acknowledged_by = at, by
            self.past_alarms = [*self.past_alarms, closed][-ALARM_HISTORY:]
            self.alarm = None
        self.drift.reset()
        return closed


class CanaryStore(ABC):
    """Where pins, states and runs live. Methods are async so a networked store fits."""

    @abstractmethod
    async def models(self) -> list[str]:
        """Models with a current pin."""

    @abstractmethod
    async def get_pin(self, model: str) -> Pin | None: ...

    @abstractmethod
    async def put_pin(self, pin: Pin) -> None:
        """Make ``pin`` current; an existing pin is kept as an older version."""

    @abstractmethod
    async def pin_versions(self, model: str) -> list[int]:
        """Every stored pin version of ``model``, the current one included."""

    @abstractmethod
    async def get_state(self, model: str) -> ModelState | None: ...

    @abstractmethod
    async def put_state(self, state: ModelState) -> None: ...

    @abstractmethod
    async def append_run(self, run: CanaryRun, keep: int) -> None:
        """Add ``run`` to the history, keeping the newest ``keep``."""

    @abstractmethod
    async def runs(self, model: str, limit: int | None = None) -> list[CanaryRun]:
        """The newest ``limit`` runs (all if None), oldest first."""

    @abstractmethod
    async def unpin(self, model: str) -> bool:
        """Drop the current pin and state (older pins and runs stay); False if not pinned."""

    @abstractmethod
    def lock(self, model: str) -> AbstractAsyncContextManager[None]:
        """``async with store.lock(model)``: one writer of ``model`` at a time."""


def _atomic_write(path: Path, payload: bytes) -> None:
    make_private_dir(path.parent)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(payload)
            out.flush()
            os.fchmod(out.fileno(), FILE_MODE)
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


class FileCanaryStore(CanaryStore):
    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def model_dir(self, model: str) -> Path:
        name = quote(model, safe="-_")
        return self.directory / name

    def _read(self, path: Path) -> bytes | None:
        try:
            return path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise CanaryStoreError(f"cannot read {path}: {exc.strerror or exc}") from exc

    def _load(self, path: Path, cls: type[_M]) -> _M | None:
        data = self._read(path)
        if data is None:
            return None
        try:
            return cls.model_validate_json(data)
        except ValidationError as exc:
            raise CanaryStoreError(f"{path}: not a valid {cls.__name__}: "
                                   f"{exc.errors()[0]['msg']}") from exc

    def _write(self, path: Path, model: BaseModel) -> None:
        try:
            _atomic_write(path, model.model_dump_json(indent=1).encode())
        except OSError as exc:
            raise CanaryStoreError(f"cannot write {path}: {exc.strerror or exc}") from exc

    # Every method does its file work (reads, validation of pins that hold golden outputs,
    # atomic writes with fsync) in a worker thread: a gateway re-reads the store every
    # ``canary.refresh_s`` and must not stall its event loop doing so.

    async def models(self) -> list[str]:
        return await asyncio.to_thread(self._models)

    def _models(self) -> list[str]:
        if not self.directory.is_dir():
            return []
        return sorted(unquote(d.name) for d in self.directory.iterdir()
                      if (d / "pin.json").is_file())

    async def get_pin(self, model: str) -> Pin | None:
        return await asyncio.to_thread(self._load, self.model_dir(model) / "pin.json", Pin)

    async def put_pin(self, pin: Pin) -> None:
        await asyncio.to_thread(self._put_pin, pin)

    def _put_pin(self, pin: Pin) -> None:
        directory = self.model_dir(pin.model)
        current = self._load(directory / "pin.json", Pin)
        if current is not None:
            self._write(directory / f"pin-v{current.version:04d}.json", current)
        self._write(directory / "pin.json", pin)

    async def pin_versions(self, model: str) -> list[int]:
        return await asyncio.to_thread(self._pin_versions, model)

    def _pin_versions(self, model: str) -> list[int]:
        directory = self.model_dir(model)
        if not directory.is_dir():
            return []
        versions = {int(p.stem.removeprefix("pin-v")) for p in directory.glob("pin-v*.json")}
        current = self._load(directory / "pin.json", Pin)
        if current is not None:
            versions.add(current.version)
        return sorted(versions)

    async def get_state(self, model: str) -> ModelState | None:
        return await asyncio.to_thread(self._load, self.model_dir(model) / "state.json",
                                       ModelState)

    async def put_state(self, state: ModelState) -> None:
        await asyncio.to_thread(self._write, self.model_dir(state.model) / "state.json", state)

    async def append_run(self, run: CanaryRun, keep: int) -> None:
        await asyncio.to_thread(self._append_run, run, keep)

    def _append_run(self, run: CanaryRun, keep: int) -> None:
        path = self.model_dir(run.model) / "runs.jsonl"
        lines = (self._read(path) or b"").splitlines()
        lines = [*lines, run.model_dump_json().encode()][-keep:]
        try:
            _atomic_write(path, b"".join(line + b"\n" for line in lines))
        except OSError as exc:
            raise CanaryStoreError(f"cannot write {path}: {exc.strerror or exc}") from exc

    async def runs(self, model: str, limit: int | None = None) -> list[CanaryRun]:
        return await asyncio.to_thread(self._runs, model, limit)

    def _runs(self, model: str, limit: int | None) -> list[CanaryRun]:
        path = self.model_dir(model) / "runs.jsonl"
        lines = [line for line in (self._read(path) or b"").splitlines() if line.strip()]
        chosen = lines if limit is None else lines[-limit:] if limit > 0 else []
        try:
            return [CanaryRun.model_validate_json(line) for line in chosen]
        except ValidationError as exc:
            raise CanaryStoreError(f"{path}: a run is not valid: "
                                   f"{exc.errors()[0]['msg']}") from exc

    async def unpin(self, model: str) -> bool:
        return await asyncio.to_thread(self._unpin, model)

    def _unpin(self, model: str) -> bool:
        directory = self.model_dir(model)
        current = self._load(directory / "pin.json", Pin)
        if current is None:
            return False
        self._write(directory / f"pin-v{current.version:04d}.json", current)
        (directory / "pin.json").unlink()
        (directory / "state.json").unlink(missing_ok=True)
        return True

    @asynccontextmanager
    async def lock(self, model: str) -> AsyncIterator[None]:
        directory = self.model_dir(model)
        make_private_dir(directory)
        handle = os.open(directory / ".lock", os.O_RDWR | os.O_CREAT, FILE_MODE)
        try:
            await asyncio.to_thread(fcntl.flock, handle, fcntl.LOCK_EX)
            yield
        finally:
            os.close(handle)  # closing the descriptor releases the lock
