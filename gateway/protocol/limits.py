"""What a request may hold: the ``[limits]`` settings section, and the check that free-form JSON
can be written back (to the upstream, to records) exactly as the client sent it."""

from __future__ import annotations

from typing import Any, NoReturn

import orjson
from pydantic import Field

from gateway.kernel.errors import InvalidRequestError
from gateway.kernel.settings import Section


class LimitsSettings(Section):
    """The ``[limits]`` settings section: what one request body may hold, beyond its size in
    bytes (``server.max_body_bytes``). Each bound is checked before the work it protects."""

    max_json_depth: int = Field(default=64, ge=8, le=200)
    """Deepest nesting of objects and arrays in a body (the body itself is level 1); deeper is a
    400 before parsing. At most 200: below the JSON parser's own limit, and with room under
    orjson's serializer limit (254) for the envelopes a request is written back in (upstream
    bodies, records)."""
    max_json_containers: int = Field(default=65536, ge=64)
    """Objects and arrays in one body, counted before parsing: what parsing costs grows with."""
    max_messages: int = Field(default=4096, ge=1)
    """Messages of one chat request."""
    max_model_name_chars: int = Field(default=256, ge=16, le=65536)
    """Longest ``model`` a request may name."""


DEFAULT_LIMITS = LimitsSettings()

PARAM_CHARS = 200
"""The longest parameter path an error names (keys are the client's: a 1 MB key is not echoed)."""


def check_json(values: dict[str, Any]) -> None:
    """Free-form JSON (``path → value``) must be written back exactly as the client sent it:
    integers within 64 bits (what upstreams, records and JSON tooling carry) and finite numbers
    (orjson writes inf and nan as null: a ``1e400`` would reach the upstream as ``null``).

    Checked in one round trip through orjson (C speed); a failure is located by bisecting each
    container with more round trips, never by walking millions of items in Python."""
    if not _unwritable(values):
        return
    path: list[str] = []
    value: Any = values
    while isinstance(value, dict | list):
        keys = list(value) if isinstance(value, dict) else None
        items = list(value.values()) if isinstance(value, dict) else value
        low, high = 0, len(items)
        while high - low > 1:
            middle = (low + high) // 2
            if _unwritable(items[low:middle]):
                high = middle
            else:
                low = middle
        if not items or not _unwritable(items[low]):
            break
        path.append(str(keys[low]) if keys is not None else str(low))
        value = items[low]
    if isinstance(value, bool) or not isinstance(value, int | float):
        _refuse(path, "not representable as JSON")
    if isinstance(value, int):
        _refuse(path, "integer outside the 64-bit range")
    _refuse(path, "numbers must be finite (not inf or nan, nor as large as 1e400)")


def _unwritable(value: Any) -> bool:
    """Whether ``value`` does not come back from orjson as it was (inf and nan come back as
    null; an integer past 64 bits is refused)."""
    try:
        return bool(orjson.loads(orjson.dumps(value)) != value)
    except (TypeError, orjson.JSONDecodeError):  # orjson.JSONEncodeError is a TypeError
        return True


def _refuse(parts: list[str], reason: str) -> NoReturn:
    path = ".".join(parts)
    param = path if len(path) <= PARAM_CHARS else path[:PARAM_CHARS] + "…"
    raise InvalidRequestError(f"{param}: {reason}", param=param or None)
