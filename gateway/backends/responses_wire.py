"""An upstream's own Responses API, read: its response object and its SSE events.

Used when an HTTP model forwards ``/v1/responses`` (``responses = "forward"``): the client gets
the upstream's bytes; the gateway reads from them what metrics and records need (the output
text, the status, ``usage.input_tokens`` / ``output_tokens``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from gateway.kernel.errors import UpstreamError
from gateway.kernel.generation import ChoiceResult, Usage

TERMINAL_EVENTS = frozenset({"response.completed", "response.incomplete", "response.failed"})
"""The events that carry the whole response last in a Responses stream."""


def output_text(response: dict[str, Any]) -> str:
    """The text of a response object's ``output_text`` parts, joined."""
    pieces: list[str] = []
    for item in response.get("output") or []:
        if isinstance(item, dict) and item.get("type") == "message":
            for part in item.get("content") or []:
                if isinstance(part, dict) and part.get("type") == "output_text":
                    pieces.append(str(part.get("text") or ""))
    return "".join(pieces)


def usage_of(response: dict[str, Any]) -> Usage:
    """``usage.input_tokens`` / ``output_tokens`` as the gateway counts tokens."""
    usage = response.get("usage")
    if not isinstance(usage, dict):
        return Usage()
    prompt, completion = usage.get("input_tokens"), usage.get("output_tokens")
    return Usage(prompt if isinstance(prompt, int) else 0,
                 completion if isinstance(completion, int) else 0)


def choice_of(response: dict[str, Any]) -> ChoiceResult:
    """The response as one choice: its output text, ``stop`` when completed, ``length`` when
    incomplete for its token budget, else its status."""
    status = response.get("status")
    if status == "completed":
        finish: str | None = "stop"
    elif status == "incomplete":
        details = response.get("incomplete_details") or {}
        finish = "length" if details.get("reason") == "max_output_tokens" else "incomplete"
    else:
        finish = str(status) if status is not None else None
    return ChoiceResult(index=0, text=output_text(response), finish_reason=finish)


@dataclass(slots=True)
class Event:
    """One SSE event as it came (``raw``, its blank line included) and its parsed data."""

    raw: bytes
    data: dict[str, Any]

    @property
    def type(self) -> str:
        return str(self.data.get("type", ""))


class EventReader:
    """Splits a byte stream into whole SSE events (``\\n\\n``-terminated)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._tail = b""

    def feed(self, data: bytes) -> list[Event]:
        blocks = (self._tail + data).replace(b"\r\n", b"\n").split(b"\n\n")
        self._tail = blocks.pop()
        return [event for block in blocks if (event := self._parse(block)) is not None]

    def _parse(self, block: bytes) -> Event | None:
        payload = b"\n".join(line[5:].strip() for line in block.split(b"\n")
                             if line.startswith(b"data:"))
        if not payload:
            return None
        try:
            data = orjson.loads(payload)
        except orjson.JSONDecodeError as exc:
            raise UpstreamError(f"model {self.name}: upstream sent an invalid SSE event") \
                from exc
        if not isinstance(data, dict):
            raise UpstreamError(f"model {self.name}: upstream sent an invalid SSE event")
        return Event(block + b"\n\n", data)


def failure_events(body: dict[str, Any], after: int, response: dict[str, Any] | None) -> bytes:
    """A failure after a forwarded stream started: OpenAI's ``error`` event (``body``: an
    OpenAI error body) and ``response.failed``, numbered on from ``after``."""
    error = body.get("error") or {}
    code = error.get("code") or error.get("type")
    events = [("error", {"code": code, "message": error.get("message"),
                         "param": error.get("param")})]
    if response is not None:
        events.append(("response.failed", {"response": {
            **response, "status": "failed",
            "error": {"code": code, "message": error.get("message")}}}))
    return b"".join(
        b"event: " + kind.encode() + b"\ndata: "
        + orjson.dumps({"type": kind, "sequence_number": after + 1 + i, **fields}) + b"\n\n"
        for i, (kind, fields) in enumerate(events))
