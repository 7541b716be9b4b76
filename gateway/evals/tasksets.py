"""The task-set format: one JSON object per line (JSONL), shared by eval, routing and canaries.

Each line is a :class:`TaskItem`::

    {"id": "ref-heldout-add3-0042", "kind": "completion", "prompt": "rev(123+456)=",
     "answer": "975", "grader": {"type": "exact"}, "slice": "add/3", "max_tokens": 5,
     "meta": {"family": "add", "level": 3}}

- ``kind`` ``"completion"`` takes ``prompt`` (a string); ``"chat"`` takes ``messages``
  (``[{"role": "user", "content": "..."}]``); never both.
- ``answer`` is the reference answer as the client would receive it; ``grader`` names a grader
  of :mod:`gateway.evals.graders` and its parameters; ``slice`` groups items for per-slice figures.
- ``max_tokens`` is the generation budget; ``meta`` is free-form JSON carried along.

:func:`load_taskset` rejects a bad file with ``path:line: what is wrong``; ids must be unique.
"""

from __future__ import annotations

import os
import tempfile
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from gateway.evals.graders import GradeResult, GraderSpec, describe_errors
from gateway.kernel.errors import ConfigError


class TaskSetError(ConfigError):
    """A task-set file cannot be read or has an invalid line (the message names ``file:line``)."""


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    role: Literal["system", "user", "assistant"]
    content: str


class TaskItem(BaseModel):
    """One task: the request to send, the reference answer, how to grade, and its slice."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(min_length=1)
    kind: Literal["completion", "chat"]
    prompt: str | None = None
    messages: tuple[ChatMessage, ...] | None = None
    answer: str
    grader: GraderSpec
    slice: str = Field(min_length=1)
    max_tokens: int = Field(gt=0)
    meta: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _request_matches_kind(self) -> TaskItem:
        if self.kind == "completion":
            if self.prompt is None or self.messages is not None:
                raise ValueError("a completion item needs 'prompt' (a string) and no 'messages'")
        elif not self.messages or self.prompt is not None:
            raise ValueError("a chat item needs non-empty 'messages' and no 'prompt'")
        return self

    def grade(self, output: str) -> GradeResult:
        """Grade a model's output text against this item's answer."""
        return self.grader.grade(output, self.answer)

    def to_json(self) -> dict[str, Any]:
        """The item as one JSON object (grader parameters left at their defaults omitted)."""
        data: dict[str, Any] = self.model_dump(mode="json", by_alias=True, exclude_none=True)
        params = self.grader.model_dump(mode="json", by_alias=True, exclude_defaults=True)
        data["grader"] = {"type": self.grader.type, **params}
        if not self.meta:
            data.pop("meta", None)
        return data


def parse_item(line: str | bytes, where: str = "<item>") -> TaskItem:
    """One task-set line; errors become :class:`TaskSetError` prefixed with ``where``."""
    try:
        data = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise TaskSetError(f"{where}: invalid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise TaskSetError(f"{where}: expected a JSON object, got {type(data).__name__}")
    try:
        return TaskItem.model_validate(data)
    except ValidationError as exc:
        raise TaskSetError(f"{where}: {describe_errors(exc)}") from exc


def load_taskset(path: str | os.PathLike[str]) -> list[TaskItem]:
    """Every item of a JSONL task set, in file order. Blank lines are skipped.

    Raises :class:`TaskSetError` for a missing/unreadable file, an empty one, a bad line (with
    ``path:line``) or a repeated id.
    """
    file = Path(path)
    try:
        lines = file.read_bytes().splitlines()
    except OSError as exc:
        raise TaskSetError(f"cannot read task set {file}: {exc.strerror or exc}") from exc
    items: list[TaskItem] = []
    seen: dict[str, int] = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        item = parse_item(line, f"{file}:{number}")
        if item.id in seen:
            raise TaskSetError(f"{file}:{number}: id {item.id!r} repeats line {seen[item.id]}")
        seen[item.id] = number
        items.append(item)
    if not items:
        raise TaskSetError(f"{file}: the task set has no items")
    return items


def save_taskset(path: str | os.PathLike[str], items: Iterable[TaskItem]) -> None:
    """Write ``items`` as JSONL (atomically: a temporary file renamed over ``path``)."""
    file = Path(path)
    rows = list(items)
    ids = [item.id for item in rows]
    if len(set(ids)) != len(ids):
        raise TaskSetError(f"{file}: item ids must be unique")
    payload = b"".join(orjson.dumps(item.to_json()) + b"\n" for item in rows)
    file.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{file.name}.", dir=file.parent)
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(payload)
        os.replace(temporary, file)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def by_slice(items: Sequence[TaskItem]) -> dict[str, list[TaskItem]]:
    """Items grouped by slice, slices in order of first appearance."""
    groups: dict[str, list[TaskItem]] = defaultdict(list)
    for item in items:
        groups[item.slice].append(item)
    return dict(groups)
