"""The generation types: one request to one model, its sampling parameters, its result and the
chunks of a streamed result.

These are plain objects with no HTTP in them, so the router, the verifiers, the records and the
canaries use the same ones in the server, a CLI or a notebook (see :mod:`gateway.kernel.backend`
for the interface that produces them).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from gateway.kernel.errors import InvalidRequestError
from gateway.kernel.modeltuple import ModelTuple

RequestKind = Literal["chat", "completion"]

Prompt = str | list[int]
"""One completion prompt: text, or token ids."""
Prompts = Prompt | list[str] | list[list[int]]
"""A completion's ``prompt`` in every form OpenAI accepts: one prompt, or several (a batch)."""


def prompt_batch(prompt: Prompts | None) -> list[Prompt] | None:
    """The prompts of a batch (a list of strings or of token-id lists), in order; ``None`` for a
    single prompt."""
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], str | list):
        return list(prompt)
    return None


@dataclass(slots=True)
class SamplingParams:
    """Every decoding parameter, as applied. ``None`` means "not sent; the engine's default"."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int | None = None
    min_p: float | None = None
    max_tokens: int | None = None
    min_tokens: int | None = None
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float | None = None
    logprobs: int | None = None
    """``None``: no logprobs; ``k``: the sampled token's logprob and the ``k`` most likely."""
    n: int = 1
    ignore_eos: bool = False

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0 or self.top_k == 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(slots=True)
class GenerationRequest:
    """One request to one model, normalised from either OpenAI surface."""

    request_id: str
    kind: RequestKind
    sampling: SamplingParams
    messages: list[dict[str, Any]] | None = None
    prompt: Prompts | None = None
    """One prompt, or a batch of them (:func:`prompt_batch`): prompt ``i``'s choice ``j`` is
    choice ``i * n + j``, as OpenAI numbers them."""
    passthrough: dict[str, Any] = field(default_factory=dict)
    """Request fields tiergate does not interpret (tools, response_format, vLLM extras, unknown
    fields): HTTP upstreams receive them verbatim; the in-process engine rejects what it cannot
    honour."""
    return_token_ids: bool = False
    trace_headers: dict[str, str] = field(default_factory=dict)
    """The client's W3C trace headers (``traceparent``, ``tracestate``), if it sent any."""
    max_tokens_field: Literal["max_tokens", "max_completion_tokens"] = "max_tokens"
    """Which name the client used for the token budget: HTTP upstreams get the same one, so
    their errors name the parameter the client sent."""


@dataclass(slots=True)
class TopLogprob:
    token: str
    logprob: float
    token_id: int | None = None
    bytes: list[int] | None = None


@dataclass(slots=True)
class TokenLogprob:
    """The sampled token's logprob and the most likely alternatives at its position."""

    token: str
    logprob: float
    token_id: int | None = None
    bytes: list[int] | None = None
    top: list[TopLogprob] = field(default_factory=list)


@dataclass(slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def to_openai(self) -> dict[str, Any]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
            **self.extra,
        }


@dataclass(slots=True)
class ChoiceResult:
    index: int
    text: str
    finish_reason: str | None
    token_ids: list[int] | None = None
    logprobs: list[TokenLogprob] | None = None
    stop_reason: int | str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    """Message fields from an upstream that tiergate passes on (tool_calls, reasoning_content)."""


@dataclass(slots=True)
class Timing:
    started_at: float = 0.0
    """Wall clock (epoch seconds) when the backend call began."""
    first_token_s: float | None = None
    total_s: float = 0.0


@dataclass(slots=True)
class GenerationResult:
    model: ModelTuple
    choices: list[ChoiceResult]
    usage: Usage
    timing: Timing = field(default_factory=Timing)
    prompt_token_ids: list[int] | None = None
    rendered_prompt: str | None = None
    runtime: dict[str, Any] = field(default_factory=dict)
    """Device, library versions and determinism settings of the call (for records)."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Top-level response fields from an upstream that tiergate passes on."""
    raw_body: bytes | None = None
    """The upstream's answer as received (HTTP, not streamed): the bytes ``choices``, ``usage``,
    ``prompt_token_ids`` and ``extra`` were parsed from. A listener that keeps the answer may keep
    these bytes rather than build it again (records do: :mod:`gateway.records.builder`)."""


@dataclass(slots=True)
class GenerationChunk:
    """A piece of a streamed answer for one choice, or (``index`` None) the final usage."""

    index: int | None
    text: str = ""
    token_ids: list[int] | None = None
    logprobs: list[TokenLogprob] | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    usage: Usage | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    """Delta fields passed on from an upstream (tool_calls, reasoning_content)."""
    prompt_token_ids: list[int] | None = None
    """On the final (usage) chunk, where the backend knows them: what records need of a
    stream that a whole result carries too."""
    rendered_prompt: str | None = None
    runtime: dict[str, Any] | None = None
    buffered: bool = False
    """More chunks of this stream are already in memory: the gateway may hold this one back
    and send them together (one write instead of several; set by the HTTP backend for SSE
    events that arrived in one read)."""


class StreamAccumulator:
    """Builds the :class:`GenerationResult` of a stream from its chunks (records need it)."""

    def __init__(self, model: ModelTuple, n: int) -> None:
        self.model = model
        self.started = time.perf_counter()
        self.started_at = time.time()
        self.first_token_s: float | None = None
        self.choices = [ChoiceResult(index=i, text="", finish_reason=None) for i in range(n)]
        self._texts: list[list[str]] = [[] for _ in range(n)]
        self._textless = [0] * n  # per choice, the chunks with token ids and no text
        self.usage: Usage | None = None
        self.runtime: dict[str, Any] = {}
        self.prompt_token_ids: list[int] | None = None
        self.rendered_prompt: str | None = None

    @property
    def pieces(self) -> list[int]:
        """Per choice, the chunks that carried output, text or token ids (what a stream cut
        before its usage came is accounted by: ``gateway.models.cost.usage_so_far``); counted
        from the texts kept, not per chunk."""
        return [len(texts) + textless
                for texts, textless in zip(self._texts, self._textless, strict=True)]

    def add(self, chunk: GenerationChunk) -> None:
        if chunk.usage is not None:
            self.usage = chunk.usage
        if chunk.prompt_token_ids is not None:
            self.prompt_token_ids = chunk.prompt_token_ids
        if chunk.rendered_prompt is not None:
            self.rendered_prompt = chunk.rendered_prompt
        if chunk.runtime is not None:
            self.runtime = chunk.runtime
        index = chunk.index
        if index is None:
            return
        while index >= len(self.choices):
            self.choices.append(ChoiceResult(index=len(self.choices), text="", finish_reason=None))
            self._texts.append([])
            self._textless.append(0)
        choice = self.choices[index]
        text, token_ids = chunk.text, chunk.token_ids
        if text or token_ids:
            if self.first_token_s is None:
                self.first_token_s = time.perf_counter() - self.started
            if text:
                self._texts[index].append(text)
            else:
                self._textless[index] += 1
            if token_ids:
                choice.token_ids = (choice.token_ids or []) + token_ids
        if chunk.logprobs:
            choice.logprobs = (choice.logprobs or []) + chunk.logprobs
        if chunk.finish_reason is not None:
            choice.finish_reason = chunk.finish_reason
            choice.stop_reason = chunk.stop_reason

    def result(self) -> GenerationResult:
        for choice, parts in zip(self.choices, self._texts, strict=True):
            choice.text = "".join(parts)
        return GenerationResult(
            model=self.model,
            choices=self.choices,
            usage=self.usage or Usage(),
            timing=Timing(
                started_at=self.started_at,
                first_token_s=self.first_token_s,
                total_s=time.perf_counter() - self.started,
            ),
            prompt_token_ids=self.prompt_token_ids,
            rendered_prompt=self.rendered_prompt,
            runtime=self.runtime,
        )


@dataclass(slots=True)
class EmbeddingRequest:
    """One embeddings request to one model: a batch of texts, or of token-id lists."""

    request_id: str
    input: list[str] | list[list[int]]
    passthrough: dict[str, Any] = field(default_factory=dict)
    """Fields the backend passes on (HTTP: ``encoding_format``, ``dimensions``, ``user``,
    unknown ones) or refuses (in-process: what it cannot honour)."""
    trace_headers: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class EmbeddingResult:
    model: ModelTuple
    embeddings: list[list[float] | str]
    """One per input, in order: floats, or an upstream's base64 string (little-endian
    float32), as the backend produced them."""
    usage: Usage
    extra: dict[str, Any] = field(default_factory=dict)
    """Top-level response fields from an upstream that tiergate passes on."""


def message_text(content: Any, param: str, reader: str) -> str:
    """A chat message's ``content`` as plain text: a string, ``null`` (empty), or text parts
    joined by newlines. Any other part is refused as a bad ``param``, naming the ``reader``
    (e.g. "the in-process engine") that takes text only."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    texts = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else type(part).__name__
        if kind != "text" or not isinstance(part.get("text"), str):
            raise InvalidRequestError(f"{param}: content parts of type {kind!r} are not "
                                      f"supported by {reader} (text only)", param=param)
        texts.append(part["text"])
    return "\n".join(texts)
