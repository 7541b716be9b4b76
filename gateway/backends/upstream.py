"""What an upstream's answers are made of, before a backend reads them: an error status mapped
to the client's error (:func:`map_status`, its message redacted), and an event stream's
pieces — one read's items (:class:`Read`) and its complete lines across reads
(:class:`SseLines`). Shared by the OpenAI-compatible and Anthropic backends."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import orjson

from gateway.kernel.errors import (
    InvalidRequestError,
    RateLimitError,
    RequestTooLargeError,
    ServiceUnavailableError,
    TiergateError,
    UpstreamError,
    UpstreamTimeoutError,
)
from gateway.kernel.secrets import redact

T = TypeVar("T")


def retry_after(headers: Any) -> float | None:
    try:
        return float(headers.get("retry-after")) if headers.get("retry-after") else None
    except ValueError:
        return None


def _upstream_message(status: int, body: bytes) -> tuple[str, str | None]:
    """The upstream's error message, and the parameter it names (OpenAI's ``param``)."""
    try:
        data = orjson.loads(body)
        error = data.get("error") if isinstance(data, dict) else None
        if isinstance(error, dict) and error.get("message"):
            param = error.get("param")
            return str(error["message"]), str(param) if isinstance(param, str) else None
        if isinstance(data, dict) and data.get("message"):  # vLLM < 0.6 style
            return str(data["message"]), None
    except orjson.JSONDecodeError:
        pass
    return body[:200].decode("utf-8", "replace") or f"HTTP {status}", None


def map_status(status: int, body: bytes, headers: Any) -> TiergateError:
    """An upstream's error response → the error the client sees (credentials it repeats
    masked)."""
    message, param = _upstream_message(status, body)
    message = redact(message)
    wait = retry_after(headers)
    if status in (400, 422):
        return InvalidRequestError(message, param=param, code="upstream_rejected_request")
    if status == 413:
        return RequestTooLargeError(message)
    if status == 429:
        return RateLimitError(f"upstream is rate limiting: {message}", retry_after=wait or 1)
    if status == 503:
        return ServiceUnavailableError(f"upstream unavailable: {message}",
                                       retry_after=wait or 1)
    if status == 504:
        return UpstreamTimeoutError(f"upstream timed out: {message}")
    if status in (401, 403):
        return UpstreamError(f"upstream refused the gateway's credentials ({status})")
    return UpstreamError(f"upstream returned {status}: {message}")



@dataclass(slots=True)
class Read(Generic[T]):
    """What one read of an upstream's event stream gave: its items, a failure after them, and
    whether the stream's end was seen."""

    items: list[T] = field(default_factory=list)
    failure: TiergateError | None = None
    done: bool = False


class SseLines:
    """The ``data:`` payloads of an event stream's complete lines, across reads."""

    def __init__(self) -> None:
        self.tail = b""  # a line not complete yet

    def feed(self, data: bytes) -> list[bytes]:
        return [line[5:].strip() for line in self.split(data) if line.startswith(b"data:")]

    def split(self, data: bytes) -> list[bytes]:
        """The complete lines so far, ``data:`` or not (a caller that keeps the ``data:`` ones
        itself passes over them once, not twice)."""
        lines = (self.tail + data if self.tail else data).split(b"\n")
        self.tail = lines.pop()
        return lines
