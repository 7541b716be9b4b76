"""The training-data format of verifiers, its loaders, and the stable train/validation split.

One JSON object per line (JSONL); see ``docs/verifiers.md`` for the full description::

    {"id": "gsm8k-0007",
     "request": {"messages": [{"role": "user", "content": "Janet's ducks lay 16 eggs ..."}]},
     "small": {"text": "She sells 16 - 3 - 4 = 9 eggs ... #### 18",
               "token_logprobs": [-0.01, -0.3], "top_logprobs": [[-0.01, -4.2], [-0.3, -1.5]]},
     "large": {"text": "..."},
     "small_correct": true, "large_correct": true, "slice": "gsm8k"}

``request`` is OpenAI-shaped (``messages`` or ``prompt``); ``small`` is the small model's answer
(``null`` for prompt-only data such as MMLU outcomes), ``large`` is optional. Rows that do not
follow the format are reported as problems (``file:line: what is wrong``) and skipped, or raise
:class:`~verifiers.errors.DataFormatError` when ``strict``.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from verifiers.errors import DataFormatError

Split = Literal["train", "validation"]
VALIDATION_BUCKETS = 2
"""A prompt is in the validation split when ``int(sha256(prompt), 16) % 10 < 2`` (about 20 %)."""
SPLIT_RULE = "validation when int(sha256(prompt), 16) % 10 < 2, else train"
"""The split, in the words a manifest records it with (``training.split``)."""


@dataclass(frozen=True, slots=True)
class Answer:
    """One model answer: its text and, when the server returned them, per-token logprobs.

    ``top_logprobs[i]`` holds the logprobs of the most likely tokens at position ``i`` (the
    sampled one usually among them); token strings are not needed by any feature.
    """

    text: str
    token_logprobs: tuple[float, ...] | None = None
    top_logprobs: tuple[tuple[float, ...], ...] | None = None

    @classmethod
    def from_json(cls, obj: Any) -> Answer:
        if isinstance(obj, str):
            return cls(obj)
        if not isinstance(obj, Mapping):
            raise DataFormatError("an answer must be an object with 'text' (or a string)")
        text = obj.get("text")
        if not isinstance(text, str):
            raise DataFormatError("answer 'text' must be a string")
        tokens = obj.get("token_logprobs")
        tops = obj.get("top_logprobs")
        openai = obj.get("logprobs")
        if tokens is None and isinstance(openai, Mapping) and isinstance(openai.get("content"),
                                                                          list):
            # The OpenAI chat shape: {"content": [{"token", "logprob", "top_logprobs": [...]}]}
            content = openai["content"]
            tokens = [entry.get("logprob") if isinstance(entry, Mapping) else None
                      for entry in content]
            tops = [entry.get("top_logprobs") if isinstance(entry, Mapping) else None
                    for entry in content]
        token_logprobs = None if tokens is None else _floats(tokens, "token_logprobs")
        top_logprobs = None
        if tops is not None:
            if not isinstance(tops, list):
                raise DataFormatError("'top_logprobs' must be a list with one entry per token")
            top_logprobs = tuple(_top_entry(entry) for entry in tops)
        return cls(text, token_logprobs, top_logprobs)

    def to_json(self) -> dict[str, Any]:
        obj: dict[str, Any] = {"text": self.text}
        if self.token_logprobs is not None:
            obj["token_logprobs"] = list(self.token_logprobs)
        if self.top_logprobs is not None:
            obj["top_logprobs"] = [list(entry) for entry in self.top_logprobs]
        return obj


def _floats(values: Any, what: str) -> tuple[float, ...]:
    if not isinstance(values, list):
        raise DataFormatError(f"{what!r} must be a list of numbers")
    out = []
    for value in values:
        if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
            raise DataFormatError(f"{what!r} must hold numbers, found {value!r}")
        out.append(float(value))
    return tuple(out)


def _top_entry(entry: Any) -> tuple[float, ...]:
    """One position's alternatives: ``{token: lp}``, ``[{"token", "logprob"}]`` or ``[lp]``."""
    if entry is None:
        return ()
    if isinstance(entry, Mapping):
        return _floats(list(entry.values()), "top_logprobs")
    if isinstance(entry, list):
        values = [item.get("logprob") if isinstance(item, Mapping) else item for item in entry]
        return _floats(values, "top_logprobs")
    raise DataFormatError("each 'top_logprobs' entry must be an object or a list")


def prompt_text(request: Mapping[str, Any]) -> str:
    """The text a verifier reads from an OpenAI-shaped request (``messages`` or ``prompt``).

    Chat messages are joined by a blank line (text parts of multi-part contents included); a
    completion prompt is used as is.
    """
    messages = request.get("messages")
    if messages is not None:
        if not isinstance(messages, list) or not messages:
            raise DataFormatError("'messages' must be a non-empty list")
        parts: list[str] = []
        for message in messages:
            content = message.get("content") if isinstance(message, Mapping) else None
            if isinstance(content, str):
                parts.append(content)
            elif isinstance(content, list):
                parts.extend(str(p.get("text", "")) for p in content
                             if isinstance(p, Mapping) and p.get("type") == "text")
            elif content is not None:
                raise DataFormatError("a message 'content' must be a string or a list of parts")
        return "\n\n".join(parts)
    prompt = request.get("prompt")
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        return prompt[0]
    raise DataFormatError("a request needs 'messages' or a string 'prompt'")


@dataclass(frozen=True, slots=True)
class VerifierInput:
    """What a verifier sees for one request: the prompt text, the small model's answer (answer
    verifiers), and the request's slice when the caller labels it (``None`` otherwise)."""

    prompt: str
    answer: Answer | None = None
    slice: str | None = None

    @classmethod
    def from_request(cls, request: Mapping[str, Any], answer: Answer | str | None = None,
                     slice: str | None = None) -> VerifierInput:
        if isinstance(answer, str):
            answer = Answer(answer)
        return cls(prompt_text(request), answer, slice)


@dataclass(frozen=True, slots=True)
class Example:
    """One training / evaluation row."""

    id: str
    request: Mapping[str, Any]
    small_correct: bool
    large_correct: bool | None = None
    small: Answer | None = None
    large: Answer | None = None
    slice: str | None = None
    prompt: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if not self.prompt:
            object.__setattr__(self, "prompt", prompt_text(self.request))

    @property
    def input(self) -> VerifierInput:
        return VerifierInput(self.prompt, self.small, self.slice)

    @classmethod
    def from_json(cls, obj: Any) -> Example:
        if not isinstance(obj, Mapping):
            raise DataFormatError("a row must be a JSON object")
        row_id = obj.get("id")
        if not isinstance(row_id, str | int) or isinstance(row_id, bool) or row_id == "":
            raise DataFormatError("'id' must be a non-empty string")
        request = obj.get("request")
        if not isinstance(request, Mapping):
            raise DataFormatError("'request' must be an object with 'messages' or 'prompt'")
        small_correct = obj.get("small_correct")
        if not isinstance(small_correct, bool):
            raise DataFormatError("'small_correct' must be true or false")
        large_correct = obj.get("large_correct")
        if large_correct is not None and not isinstance(large_correct, bool):
            raise DataFormatError("'large_correct' must be true, false or absent")
        slice_ = obj.get("slice")
        if slice_ is not None and not isinstance(slice_, str):
            raise DataFormatError("'slice' must be a string")
        small = obj.get("small")
        large = obj.get("large")
        return cls(
            id=str(row_id), request=dict(request), small_correct=small_correct,
            large_correct=large_correct,
            small=None if small is None else Answer.from_json(small),
            large=None if large is None else Answer.from_json(large),
            slice=slice_, prompt=prompt_text(request))

    def to_json(self) -> dict[str, Any]:
        obj: dict[str, Any] = {"id": self.id, "request": dict(self.request)}
        obj["small"] = None if self.small is None else self.small.to_json()
        if self.large is not None:
            obj["large"] = self.large.to_json()
        obj["small_correct"] = self.small_correct
        if self.large_correct is not None:
            obj["large_correct"] = self.large_correct
        if self.slice is not None:
            obj["slice"] = self.slice
        return obj


@dataclass(slots=True)
class Dataset:
    """Rows read from a source, with what was skipped and why."""

    examples: list[Example]
    problems: list[str] = field(default_factory=list)
    dropped: int = 0
    """Rows dropped on purpose (e.g. contaminated prompts), not counted as problems."""

    def split(self) -> tuple[list[Example], list[Example]]:
        return split_examples(self.examples)


def split_of(prompt: str) -> Split:
    """``"validation"`` when ``int(sha256(prompt), 16) % 10 < 2``, else ``"train"``.

    Depends only on the prompt text, so a row keeps its split whatever the file order, and
    duplicate prompts always land on the same side.
    """
    bucket = int(hashlib.sha256(prompt.encode("utf-8")).hexdigest(), 16) % 10
    return "validation" if bucket < VALIDATION_BUCKETS else "train"


def split_examples(examples: Iterable[Example]) -> tuple[list[Example], list[Example]]:
    train: list[Example] = []
    validation: list[Example] = []
    for example in examples:
        (validation if split_of(example.prompt) == "validation" else train).append(example)
    return train, validation


def read_examples(path: Path, *, strict: bool = False) -> Dataset:
    """Read a JSONL training-data file. Bad rows are skipped and listed in ``problems``."""
    try:
        # JSONL lines end with "\n" only: str.splitlines() would also split inside strings
        # at U+2028 and friends, which JSON leaves unescaped.
        lines = path.read_text(encoding="utf-8").split("\n")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataFormatError(f"cannot read training data {path}: {exc}") from exc
    dataset = Dataset([])
    seen: set[str] = set()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            example = Example.from_json(json.loads(line))
            if example.id in seen:
                raise DataFormatError(f"duplicate id {example.id!r}")
        except (ValueError, DataFormatError) as exc:
            reason = str(exc) if isinstance(exc, DataFormatError) else f"invalid JSON ({exc})"
            if strict:
                raise DataFormatError(f"{path}:{number}: {reason}") from exc
            dataset.problems.append(f"{path}:{number}: {reason}")
            continue
        seen.add(example.id)
        dataset.examples.append(example)
    if not dataset.examples:
        detail = f" ({dataset.problems[0]})" if dataset.problems else ""
        raise DataFormatError(f"{path} holds no usable rows{detail}")
    return dataset


def write_examples(path: Path, examples: Sequence[Example]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for example in examples:
            handle.write(json.dumps(example.to_json(), ensure_ascii=False) + "\n")
