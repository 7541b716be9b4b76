"""The shape of a request body, measured from its bytes before it is parsed.

A body built to be expensive — 240,000 tiny messages in 8 MB, a thousand levels of brackets, two
million empty objects — costs seconds of CPU and hundreds of MB to parse into Python objects.
Its nesting depth, how many objects and arrays it holds and how long its ``messages`` array is
can be read from its bytes at C speed instead, and the body refused in milliseconds
(:func:`check_shape`).

Strings are what make bytes hard to read: a bracket inside one is text. Escaped backslashes and
escaped quotes are blanked first (``\\\\`` then ``\\"``, both to two harmless bytes, so offsets
stay put), after which every quote left delimits a string. Exact for valid JSON; for invalid JSON
it measures something, and the parser refuses the body anyway.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from gateway.kernel.errors import InvalidRequestError
from gateway.protocol import LimitsSettings

SMALL_BODY = 64 * 1024
"""Bodies up to this size are measured in plain Python (numpy's per-call cost would dominate)."""

_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"{}[]")


def check_shape(body: bytes, limits: LimitsSettings) -> None:
    """Refuse a body nested deeper than ``limits.max_json_depth``, with a top-level
    ``messages`` array of more than ``limits.max_messages`` items, or with more objects and
    arrays than ``limits.max_json_containers``. A body with no more brackets than the depth
    limit is within every bound: two byte counts, the common case."""
    if body.count(b"{") + body.count(b"[") <= limits.max_json_depth:
        return
    plain = body.replace(b"\\\\", b"__").replace(b'\\"', b"__") if b"\\" in body else body
    if len(plain) <= SMALL_BODY and _check_small(plain, limits):
        return
    _check_large(plain, limits)


def _too_deep(limits: LimitsSettings) -> InvalidRequestError:
    return InvalidRequestError(f"The body nests objects and arrays deeper than "
                               f"{limits.max_json_depth} levels.")


def _too_many(containers: int, limits: LimitsSettings) -> InvalidRequestError:
    return InvalidRequestError(f"The body holds {containers} objects and arrays; at most "
                               f"{limits.max_json_containers} are accepted.")


def _check_small(plain: bytes, limits: LimitsSettings) -> bool:
    """Depth and object count of a small body; ``False`` when its messages need counting (more
    objects than ``max_messages``: the large path finds which array they are in)."""
    brackets = b"".join(plain.split(b'"')[::2]).translate(None, _NOT_BRACKETS)  # outside strings
    depth = deepest = 0
    for char in brackets:
        if char == 0x7B or char == 0x5B:  # { [
            depth += 1
            if depth > deepest:
                deepest = depth
        else:
            depth -= 1
    if deepest > limits.max_json_depth:
        raise _too_deep(limits)
    containers = (len(brackets) + depth) // 2  # openers = (openers + closers + unclosed) / 2
    if containers > limits.max_json_containers:
        raise _too_many(containers, limits)
    return containers <= limits.max_messages


def _check_large(plain: bytes, limits: LimitsSettings) -> None:
    chars = np.frombuffer(plain, dtype=np.uint8)
    in_string = np.cumsum(chars == ord('"'), dtype=np.uint8) & 1  # parity survives wrapping
    folded = chars | 0x20  # "[" → "{", "]" → "}"; no other byte folds onto either
    at = np.flatnonzero(((folded == ord("{")) | (folded == ord("}"))) & (in_string == 0))
    if at.size == 0:
        return
    step = np.where(folded[at] == ord("{"), 1, -1).astype(np.int8)
    depth = np.cumsum(step, dtype=np.int32)  # the depth after each bracket
    if int(depth.max()) > limits.max_json_depth:
        raise _too_deep(limits)
    opening = step > 0
    containers = int(np.count_nonzero(opening))
    if containers > limits.max_messages:
        _check_messages(plain, at, opening, depth, limits.max_messages)
    if containers > limits.max_json_containers:
        raise _too_many(containers, limits)


def _check_messages(plain: bytes, at: Any, opening: Any, depth: Any, limit: int) -> None:
    """Refuse a top-level ``messages`` array with more than ``limit`` objects or arrays in it
    (a message is an object: any other item is refused by validation, at the first)."""
    top = opening & (depth == 2)  # the values of the body's own keys
    index = np.arange(top.size)
    parent = np.maximum.accumulate(np.where(top, index, -1))  # the top-level value around each
    items = parent[opening & (depth == 3)]
    items = items[items >= 0]
    if items.size <= limit:
        return
    counts = np.bincount(items)
    for candidate in np.flatnonzero(counts > limit):
        if _key_before(plain, int(at[candidate])) == b"messages":
            raise InvalidRequestError(f"messages: at most {limit} messages, not "
                                      f"{int(counts[candidate])}", param="messages")


def _key_before(plain: bytes, position: int) -> bytes | None:
    """The object key just before the value that starts at ``position`` (a key written with
    escapes is not recognised: validation counts that body's messages, within
    ``max_json_containers``)."""
    head = plain[max(0, position - 64):position].rstrip(b" \t\r\n")
    if not head.endswith(b":"):
        return None
    head = head[:-1].rstrip(b" \t\r\n")
    if not head.endswith(b'"'):
        return None
    start = head.rfind(b'"', 0, len(head) - 1)
    return head[start + 1:-1] if start >= 0 else None
