"""OpenAI wire format ⇄ backend objects, for HTTP upstreams.

Builds the upstream request body from a :class:`GenerationRequest` and parses upstream responses
and SSE chunks into :class:`GenerationResult` / :class:`GenerationChunk`. Anything that is not the
OpenAI protocol raises :class:`~gateway.kernel.errors.UpstreamError`.
"""

from __future__ import annotations

from typing import Any

from gateway.kernel.errors import UpstreamError
from gateway.kernel.generation import (
    ChoiceResult,
    GenerationChunk,
    GenerationRequest,
    TokenLogprob,
    TopLogprob,
    Usage,
)

_ENVELOPE = {"id", "object", "created", "model", "choices", "usage", "prompt_token_ids"}
_MESSAGE_KNOWN = {"role", "content"}
"""Message fields read into a :class:`ChoiceResult`; every other one (``refusal``,
``tool_calls``, ``annotations``, ``reasoning_content``, a provider's own), ``null`` included, is
passed on as the upstream sent it in ``extra`` — and so is ``content: null``."""
_CHOICE_KNOWN = {"index", "message", "delta", "text", "logprobs", "finish_reason", "stop_reason",
                 "token_ids"}


def request_body(request: GenerationRequest, upstream_model: str, stream: bool) -> dict[str, Any]:
    """The JSON body sent upstream: passthrough fields, then every sampling parameter as applied."""
    s = request.sampling
    body: dict[str, Any] = dict(request.passthrough)
    body["model"] = upstream_model
    if request.kind == "chat":
        body["messages"] = request.messages
        if s.max_tokens is not None:
            body[request.max_tokens_field] = s.max_tokens
        if s.logprobs is not None:
            body["logprobs"] = True
            body["top_logprobs"] = s.logprobs
    else:
        body["prompt"] = request.prompt
        if s.max_tokens is not None:
            body["max_tokens"] = s.max_tokens
        if s.logprobs is not None:
            body["logprobs"] = s.logprobs
    body["temperature"] = s.temperature
    body["top_p"] = s.top_p
    body["n"] = s.n
    if s.presence_penalty:
        body["presence_penalty"] = s.presence_penalty
    if s.frequency_penalty:
        body["frequency_penalty"] = s.frequency_penalty
    if s.stop:
        body["stop"] = s.stop
    if s.seed is not None:
        body["seed"] = s.seed
    # vLLM extensions: sent only when set, so plain OpenAI-compatible servers are not confused.
    for name in ("top_k", "min_p", "repetition_penalty", "min_tokens"):
        value = getattr(s, name)
        if value is not None:
            body[name] = value
    if s.stop_token_ids:
        body["stop_token_ids"] = s.stop_token_ids
    if s.ignore_eos:
        body["ignore_eos"] = True
    if request.return_token_ids:
        body["return_token_ids"] = True
    if stream:
        body["stream"] = True
        options = dict(body.get("stream_options") or {})
        options["include_usage"] = True  # always: the gateway accounts tokens for every stream
        body["stream_options"] = options
    else:
        body.pop("stream", None)
        body.pop("stream_options", None)
    return body


def _top(item: Any) -> TopLogprob:
    return TopLogprob(token=str(item["token"]), logprob=float(item["logprob"]),
                      bytes=item.get("bytes"))


def parse_logprobs(raw: Any, chat: bool) -> list[TokenLogprob] | None:
    if not raw:
        return None
    if chat:
        return [
            TokenLogprob(
                token=str(item["token"]),
                logprob=float(item["logprob"]),
                bytes=item.get("bytes"),
                top=[_top(t) for t in item.get("top_logprobs") or []],
            )
            for item in raw.get("content") or []
        ]
    tops = raw.get("top_logprobs") or []
    out = []
    for i, (token, logprob) in enumerate(zip(raw["tokens"], raw["token_logprobs"], strict=True)):
        alternatives = tops[i] if i < len(tops) and tops[i] else {}
        out.append(
            TokenLogprob(
                token=str(token),
                logprob=float(logprob) if logprob is not None else 0.0,
                top=[TopLogprob(token=str(t), logprob=float(v)) for t, v in alternatives.items()],
            )
        )
    return out


def parse_usage(raw: Any) -> Usage:
    if not isinstance(raw, dict):
        return Usage()
    extra = {k: v for k, v in raw.items()
             if k not in ("prompt_tokens", "completion_tokens", "total_tokens")}
    return Usage(int(raw.get("prompt_tokens") or 0), int(raw.get("completion_tokens") or 0), extra)


def _message(message: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """A message's (or a delta's) text, and the fields passed on as they are (``content`` among
    them when it is ``null``: a tool call's answer)."""
    content = message.get("content")
    extra = {k: v for k, v in message.items() if k not in _MESSAGE_KNOWN}
    if content is None and "content" in message:
        extra["content"] = None
    return str(content or ""), extra


def parse_choice(raw: dict[str, Any], chat: bool) -> ChoiceResult:
    if chat:
        message = raw.get("message") or {}
        text, extra = _message(message)
    else:
        text = raw.get("text") or ""
        extra = {k: v for k, v in raw.items() if k not in _CHOICE_KNOWN}
    return ChoiceResult(
        index=int(raw.get("index", 0)),
        text=str(text),
        finish_reason=raw.get("finish_reason"),
        token_ids=raw.get("token_ids"),
        logprobs=parse_logprobs(raw.get("logprobs"), chat),
        stop_reason=raw.get("stop_reason"),
        extra=extra,
    )


def parse_response(
    data: Any, chat: bool
) -> tuple[list[ChoiceResult], Usage, list[int] | None, dict[str, Any]]:
    """A whole (non-streamed) upstream response: choices, usage, prompt token ids, extras."""
    try:
        choices = [parse_choice(c, chat) for c in data["choices"]]
        usage = parse_usage(data.get("usage"))
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise UpstreamError(f"upstream sent a malformed completion: {exc!r}") from exc
    extra = {k: v for k, v in data.items() if k not in _ENVELOPE}
    return choices, usage, data.get("prompt_token_ids"), extra


def parse_chunk(data: Any, chat: bool) -> list[GenerationChunk]:
    """One upstream SSE event → zero or more chunks (one per choice, or the usage)."""
    try:
        if data.get("error"):
            error = data["error"]
            message = error.get("message") if isinstance(error, dict) else str(error)
            raise UpstreamError(f"upstream failed mid-stream: {message}")
        out: list[GenerationChunk] = []
        for raw in data.get("choices") or []:
            if chat:  # _message, inline: once per streamed token
                delta = raw.get("delta") or {}
                text = delta.get("content")
                extra = {k: v for k, v in delta.items() if k not in _MESSAGE_KNOWN}
                if text is None and "content" in delta:
                    extra["content"] = None
            else:
                text = raw.get("text") or ""
                extra = {k: v for k, v in raw.items() if k not in _CHOICE_KNOWN}
            out.append(
                GenerationChunk(
                    index=int(raw.get("index", 0)),
                    text=str(text or ""),
                    token_ids=raw.get("token_ids"),
                    logprobs=parse_logprobs(raw.get("logprobs"), chat),
                    finish_reason=raw.get("finish_reason"),
                    stop_reason=raw.get("stop_reason"),
                    extra=extra,
                )
            )
        if data.get("usage"):
            out.append(GenerationChunk(index=None, usage=parse_usage(data["usage"])))
        return out
    except UpstreamError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise UpstreamError(f"upstream sent a malformed stream chunk: {exc!r}") from exc


def parse_embeddings(data: Any, count: int
                     ) -> tuple[list[list[float] | str], Usage, dict[str, Any]]:
    """An upstream's embeddings list: one embedding per input, in input order, its usage and
    extra top-level fields."""
    try:
        items = sorted(data["data"], key=lambda item: int(item.get("index", 0)))
        embeddings: list[list[float] | str] = [item["embedding"] for item in items]
        if len(embeddings) != count or not all(isinstance(e, list | str) for e in embeddings):
            raise ValueError(f"{len(embeddings)} embeddings for {count} inputs")
        usage = parse_usage(data.get("usage"))
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise UpstreamError(f"upstream sent a malformed embeddings list: {exc!r}") from exc
    extra = {k: v for k, v in data.items() if k not in ("object", "data", "model", "usage")}
    return embeddings, usage, extra
