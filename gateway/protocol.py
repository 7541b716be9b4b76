"""The OpenAI surface: typed requests (with their own conversion) and response builders.

Requests follow OpenAI's chat and completions APIs plus vLLM's extensions. Unknown fields are
kept (``extra="allow"``) and reach HTTP upstreams in ``GenerationRequest.passthrough``. Responses
are built as plain dicts (serialised with orjson on the hot path) in exactly OpenAI's shape.
"""

from __future__ import annotations

import time
from typing import Annotated, Any, ClassVar, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, model_validator

from gateway.kernel.errors import InvalidRequestError
from gateway.kernel.generation import (
    ChoiceResult,
    GenerationChunk,
    GenerationRequest,
    GenerationResult,
    SamplingParams,
    TokenLogprob,
    Usage,
)

Role = Literal["system", "developer", "user", "assistant", "tool", "function"]


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Role
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None

    @model_validator(mode="after")
    def _content_required(self) -> ChatMessage:
        if self.content is None and self.role in ("system", "developer", "user"):
            raise ValueError(f"a {self.role} message needs content")
        if isinstance(self.content, list):
            for part in self.content:
                if not isinstance(part.get("type"), str):
                    raise ValueError("each content part needs a string 'type'")
        return self


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")

    include_usage: bool = False


NonNegInt = Annotated[int, Field(ge=0, le=2**31 - 1)]
TokenBudget = Annotated[int, Field(ge=1, le=2**31 - 1)]


class _SamplingFields(BaseModel):
    """Fields shared by both surfaces (OpenAI's and vLLM's names)."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    model: str = Field(min_length=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    n: int = Field(default=1, ge=1, le=128)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = Field(default=None, ge=-(2**63), le=2**63 - 1)
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    user: str | None = None
    # vLLM extensions
    top_k: int | None = Field(default=None, ge=-1, le=2**31 - 1)
    min_p: float | None = Field(default=None, ge=0.0, le=1.0)
    repetition_penalty: float | None = Field(default=None, gt=0.0, le=10.0)
    stop_token_ids: list[NonNegInt] | None = None
    min_tokens: int | None = Field(default=None, ge=0, le=2**31 - 1)
    ignore_eos: bool = False
    return_token_ids: bool = False

    @model_validator(mode="after")
    def _stop_list(self) -> _SamplingFields:
        if isinstance(self.stop, list) and not all(self.stop):
            raise ValueError("stop sequences must be non-empty strings")
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options is only allowed when stream is true")
        return self

    @property
    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)

    def _sampling(self, max_tokens: int | None, logprobs: int | None) -> SamplingParams:
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return SamplingParams(
            temperature=1.0 if self.temperature is None else self.temperature,
            top_p=1.0 if self.top_p is None else self.top_p,
            top_k=self.top_k,
            min_p=self.min_p,
            max_tokens=max_tokens,
            min_tokens=self.min_tokens,
            stop=stop,
            stop_token_ids=list(self.stop_token_ids or []),
            seed=self.seed,
            presence_penalty=self.presence_penalty or 0.0,
            frequency_penalty=self.frequency_penalty or 0.0,
            repetition_penalty=self.repetition_penalty,
            logprobs=logprobs,
            n=self.n,
            ignore_eos=self.ignore_eos,
        )

    # Declared (so validated) but interpreted by upstreams only: passed on as sent.
    passthrough_fields: ClassVar[tuple[str, ...]] = ("user",)

    def _passthrough(self) -> dict[str, Any]:
        """Fields tiergate does not interpret, as the client sent them (unknown ones included)."""
        data = dict(self.model_extra or {})
        for name in self.passthrough_fields:
            if name in self.model_fields_set:
                data[name] = getattr(self, name)
        if data:
            _check_json_integers(data)
        return data


class ChatCompletionRequest(_SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: TokenBudget | None = None
    max_completion_tokens: TokenBudget | None = None
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None

    passthrough_fields: ClassVar[tuple[str, ...]] = (
        "user", "tools", "tool_choice", "response_format")

    @model_validator(mode="after")
    def _logprobs(self) -> ChatCompletionRequest:
        if self.top_logprobs and not self.logprobs:
            raise ValueError("top_logprobs requires logprobs to be true")
        return self

    def to_generation_request(self, request_id: str) -> GenerationRequest:
        max_tokens = self.max_completion_tokens or self.max_tokens
        logprobs = (self.top_logprobs or 0) if self.logprobs else None
        messages = [m.model_dump(exclude_none=True) for m in self.messages]
        if any(m.model_extra or isinstance(m.content, list) for m in self.messages):
            _check_json_integers(messages, "messages")
        return GenerationRequest(
            request_id=request_id,
            kind="chat",
            sampling=self._sampling(max_tokens, logprobs),
            messages=messages,
            passthrough=self._passthrough(),
            return_token_ids=self.return_token_ids,
            max_tokens_field=("max_completion_tokens" if self.max_completion_tokens is not None
                              else "max_tokens"),
        )


class CompletionRequest(_SamplingFields):
    prompt: str | Annotated[list[NonNegInt], Field(min_length=1)]
    max_tokens: TokenBudget | None = 16
    logprobs: int | None = Field(default=None, ge=0, le=20)
    echo: bool = False
    suffix: str | None = None

    passthrough_fields: ClassVar[tuple[str, ...]] = ("user", "echo", "suffix")

    def to_generation_request(self, request_id: str) -> GenerationRequest:
        return GenerationRequest(
            request_id=request_id,
            kind="completion",
            sampling=self._sampling(self.max_tokens, self.logprobs),
            prompt=self.prompt,
            passthrough=self._passthrough(),
            return_token_ids=self.return_token_ids,
        )


OpenAIRequest = ChatCompletionRequest | CompletionRequest

INT64 = (-(2**63), 2**63 - 1)


def _check_json_integers(value: Any, path: str = "") -> None:
    """Integers must fit in 64 bits: what upstreams, records and JSON tooling can carry."""
    if isinstance(value, bool):
        return
    if isinstance(value, int):
        if not INT64[0] <= value <= INT64[1]:
            raise InvalidRequestError(f"{path or 'value'}: integer outside the 64-bit range",
                                      param=path or None)
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_json_integers(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check_json_integers(item, f"{path}.{index}")


# ---------------------------------------------------------------------------------------------
# Responses


def _chat_logprobs(logprobs: list[TokenLogprob]) -> dict[str, Any]:
    return {
        "content": [
            {
                "token": lp.token,
                "logprob": lp.logprob,
                "bytes": lp.bytes if lp.bytes is not None else list(lp.token.encode()),
                "top_logprobs": [
                    {
                        "token": t.token,
                        "logprob": t.logprob,
                        "bytes": t.bytes if t.bytes is not None else list(t.token.encode()),
                    }
                    for t in lp.top
                ],
            }
            for lp in logprobs
        ]
    }


def _completion_logprobs(logprobs: list[TokenLogprob], offset: int = 0) -> dict[str, Any]:
    offsets = []
    for lp in logprobs:
        offsets.append(offset)
        offset += len(lp.token)
    return {
        "tokens": [lp.token for lp in logprobs],
        "token_logprobs": [lp.logprob for lp in logprobs],
        "top_logprobs": [{t.token: t.logprob for t in lp.top} for lp in logprobs],
        "text_offset": offsets,
    }


def _choice_extras(
    choice: ChoiceResult | GenerationChunk, return_token_ids: bool
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if choice.stop_reason is not None:
        out["stop_reason"] = choice.stop_reason
    if return_token_ids and choice.token_ids is not None:
        out["token_ids"] = choice.token_ids
    return out


def chat_completion(
    result: GenerationResult, request_id: str, model_name: str, return_token_ids: bool = False
) -> dict[str, Any]:
    choices = []
    for c in result.choices:
        message: dict[str, Any] = {"role": "assistant", "content": c.text, **c.extra}
        choices.append(
            {
                "index": c.index,
                "message": message,
                "logprobs": _chat_logprobs(c.logprobs) if c.logprobs is not None else None,
                "finish_reason": c.finish_reason,
                **_choice_extras(c, return_token_ids),
            }
        )
    body: dict[str, Any] = {
        **result.extra,
        "id": f"chatcmpl-{request_id}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model_name,
        "choices": choices,
        "usage": result.usage.to_openai(),
    }
    if return_token_ids and result.prompt_token_ids is not None:
        body["prompt_token_ids"] = result.prompt_token_ids
    return body


def completion(
    result: GenerationResult, request_id: str, model_name: str, return_token_ids: bool = False
) -> dict[str, Any]:
    choices = [
        {
            "index": c.index,
            "text": c.text,
            "logprobs": _completion_logprobs(c.logprobs) if c.logprobs is not None else None,
            "finish_reason": c.finish_reason,
            **c.extra,
            **_choice_extras(c, return_token_ids),
        }
        for c in result.choices
    ]
    body: dict[str, Any] = {
        **result.extra,
        "id": f"cmpl-{request_id}",
        "object": "text_completion",
        "created": int(time.time()),
        "model": model_name,
        "choices": choices,
        "usage": result.usage.to_openai(),
    }
    if return_token_ids and result.prompt_token_ids is not None:
        body["prompt_token_ids"] = result.prompt_token_ids
    return body


class ChunkBuilder:
    """Builds the SSE chunk objects of one streamed response (OpenAI's ``*.chunk`` shapes)."""

    def __init__(
        self, kind: Literal["chat", "completion"], request_id: str, model_name: str,
        return_token_ids: bool = False,
    ) -> None:
        self.kind = kind
        self.id = f"chatcmpl-{request_id}" if kind == "chat" else f"cmpl-{request_id}"
        self.object = "chat.completion.chunk" if kind == "chat" else "text_completion"
        self.model = model_name
        self.created = int(time.time())
        self.return_token_ids = return_token_ids
        self._role_sent: set[int] = set()
        self._text_offset: dict[int, int] = {}

    def _envelope(self, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": self.object,
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }

    def chunk(self, chunk: GenerationChunk) -> dict[str, Any]:
        assert chunk.index is not None
        index = chunk.index
        extras = _choice_extras(chunk, self.return_token_ids)
        if self.kind == "chat":
            delta: dict[str, Any] = {}
            if index not in self._role_sent:
                self._role_sent.add(index)
                delta["role"] = "assistant"
            if chunk.text or not chunk.extra:
                delta["content"] = chunk.text
            delta.update(chunk.extra)
            choice: dict[str, Any] = {
                "index": index,
                "delta": delta,
                "logprobs": _chat_logprobs(chunk.logprobs) if chunk.logprobs else None,
                "finish_reason": chunk.finish_reason,
                **extras,
            }
        else:
            offset = self._text_offset.get(index, 0)
            self._text_offset[index] = offset + len(chunk.text)
            choice = {
                "index": index,
                "text": chunk.text,
                "logprobs": (_completion_logprobs(chunk.logprobs, offset)
                             if chunk.logprobs else None),
                "finish_reason": chunk.finish_reason,
                **chunk.extra,
                **extras,
            }
        return self._envelope([choice])

    def usage(self, usage: Usage) -> dict[str, Any]:
        body = self._envelope([])
        body["usage"] = usage.to_openai()
        return body


def model_card(name: str, created: int, tiergate: dict[str, Any]) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": created, "owned_by": "tiergate",
            "tiergate": tiergate}


SSE_DONE = b"data: [DONE]\n\n"


def sse_event(data: dict[str, Any]) -> bytes:
    """One server-sent event; error events use :func:`gateway.kernel.errors.error_body` as
    ``data``."""
    return b"data: " + orjson.dumps(data) + b"\n\n"
