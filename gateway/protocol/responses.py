"""OpenAI's response shapes, built as plain dicts (serialised with orjson on the hot path):
``chat.completion``, ``text_completion``, their stream chunks, model cards and SSE events."""

from __future__ import annotations

import time
from typing import Any, Literal, Protocol

import orjson

from gateway.kernel.generation import (
    ChoiceResult,
    GenerationChunk,
    GenerationResult,
    TokenLogprob,
    Usage,
)


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


class StreamShape(Protocol):
    """What the serving object needs of a surface's stream: its events as SSE bytes."""

    def start(self) -> bytes:
        """The events before the first chunk (may be empty)."""

    def event(self, chunk: GenerationChunk) -> bytes:
        """The events of one chunk (may be empty)."""

    def end(self, result: GenerationResult, usage: Usage | None) -> bytes:
        """The events that end a complete stream (``usage``: what the client is billed for,
        when it is to be sent)."""

    def error(self, body: dict[str, Any]) -> bytes:
        """The events that end a failed stream (``body``: the OpenAI error object)."""


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

    # The stream's events as bytes (the Responses stream has the same methods).

    def start(self) -> bytes:
        """Events before the first chunk: none."""
        return b""

    def event(self, chunk: GenerationChunk) -> bytes:
        if chunk.index is None:
            return b""
        return b"data: %b\n\n" % orjson.dumps(self.chunk(chunk))  # sse_event, inline

    def end(self, result: GenerationResult, usage: Usage | None) -> bytes:
        """The usage chunk (``usage``: when the client asked for it), then ``[DONE]``."""
        return SSE_DONE if usage is None else sse_event(self.usage(usage)) + SSE_DONE

    def error(self, body: dict[str, Any]) -> bytes:
        return sse_event(body)


def model_card(name: str, created: int, tiergate: dict[str, Any]) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": created, "owned_by": "tiergate",
            "tiergate": tiergate}


SSE_DONE = b"data: [DONE]\n\n"


def sse_event(data: dict[str, Any]) -> bytes:
    """One server-sent event; error events use :func:`gateway.kernel.errors.error_body` as
    ``data``."""
    return b"data: " + orjson.dumps(data) + b"\n\n"
