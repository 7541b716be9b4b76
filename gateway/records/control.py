"""The messages between a gateway and its records delivery process, over two pipes.

Down (the process's stdin): one :class:`StartOptions` line, then :class:`Command` bytes; end of
file means the gateway died. Up (its stdout): :class:`DeliveryStatus` lines.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from enum import Enum
from typing import Any

import orjson

from gateway.records.settings import RecordsSettings


class Command(bytes, Enum):
    WAKE = b"w"
    """Records are waiting (a full batch, a flush): deliver now."""
    STOP = b"s"
    """The gateway is stopping: deliver what is left within the shutdown deadline, then exit."""


@dataclass(slots=True)
class StartOptions:
    settings: RecordsSettings
    writer: int
    """The gateway's pid: the spool segments it writes are named after it."""
    shutdown_timeout_s: float
    log_level: int

    def encode(self) -> bytes:
        """One line; the signing key in clear: it goes down a pipe, never on a command line."""
        values = self.settings.model_dump(mode="json")
        if self.settings.signing_key is not None:
            values["signing_key"] = self.settings.signing_key.get_secret_value()
        return orjson.dumps({"settings": values, "writer": self.writer,
                             "shutdown_timeout_s": self.shutdown_timeout_s,
                             "log_level": self.log_level}) + b"\n"

    @classmethod
    def decode(cls, line: bytes) -> StartOptions:
        options: dict[str, Any] = orjson.loads(line)
        return cls(RecordsSettings.model_validate(options["settings"]), int(options["writer"]),
                   float(options["shutdown_timeout_s"]), int(options["log_level"]))


@dataclass(slots=True)
class DeliveryStatus:
    delivered: dict[str, int]
    """Bytes of each of the gateway's spool segments the store has."""
    records: int
    """Records delivered since the process started."""
    recovering: int
    """Bytes of adopted segments (their writer died) still to deliver."""
    error: str | None
    """The store's error while it is failing."""
    removed: list[str]
    """Segments delivered in full and removed since the last status."""

    def encode(self) -> bytes:
        return orjson.dumps(asdict(self)) + b"\n"

    @classmethod
    def decode(cls, line: bytes) -> DeliveryStatus:
        """A status line, or ``ValueError`` for anything else."""
        try:
            data = orjson.loads(line)
            return cls({str(k): int(v) for k, v in data["delivered"].items()},
                       int(data["records"]), int(data["recovering"]),
                       None if data["error"] is None else str(data["error"]),
                       [str(name) for name in data["removed"]])
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError, ValueError) as exc:
            raise ValueError(f"not a status line: {line[:200]!r}") from exc
