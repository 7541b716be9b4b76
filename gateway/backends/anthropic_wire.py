"""OpenAI chat ⇄ the Anthropic Messages API (``POST /v1/messages``), both ways.

:func:`messages_body` turns a chat :class:`GenerationRequest` into a Messages request (the
system prompt to the top-level ``system``, tool calls and tool results to ``tool_use`` /
``tool_result`` blocks, OpenAI function tools to ``tools`` with ``input_schema``);
:func:`parse_message` turns a Messages answer into choices and usage; :class:`StreamTranslator`
turns its SSE events into :class:`GenerationChunk` s. What the Messages API cannot honour (``n``
above 1, logprobs, penalties, vLLM's extensions, text completions) is a 400 naming the
parameter, before anything is sent.
"""

from __future__ import annotations

from typing import Any

import orjson

from gateway.kernel.errors import (
    InvalidRequestError,
    RateLimitError,
    ServiceUnavailableError,
    TiergateError,
    UpstreamError,
)
from gateway.kernel.generation import (
    ChoiceResult,
    GenerationChunk,
    GenerationRequest,
    Usage,
    message_text,
)
from gateway.kernel.secrets import redact

FINISH_REASONS = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length",
                  "tool_use": "tool_calls", "pause_turn": "stop", "refusal": "content_filter"}
"""Anthropic ``stop_reason`` → OpenAI ``finish_reason``."""

IGNORED_FIELDS = frozenset({"store", "service_tier", "metadata"})
READER = "the Anthropic Messages API"
"""Passthrough fields that do not change what the model generates."""
NEUTRAL_VALUES: dict[str, tuple[Any, ...]] = {
    "response_format": (None, {"type": "text"}),
    "logit_bias": (None, {}),
    "functions": (None, []),
    "function_call": (None, "none", "auto"),
}
"""Passthrough fields accepted only with the value that asks nothing of the model."""


def unsupported(name: str, what: str = "") -> InvalidRequestError:
    return InvalidRequestError(
        f"'{name}'{what} is not supported by the Anthropic Messages API", param=name,
        code="unsupported_parameter")


# -- request -----------------------------------------------------------------------------------


def _check_sampling(request: GenerationRequest) -> None:
    s = request.sampling
    refused = [
        ("n", s.n != 1, " other than 1"),
        ("logprobs", s.logprobs is not None, ""),
        ("presence_penalty", bool(s.presence_penalty), ""),
        ("frequency_penalty", bool(s.frequency_penalty), ""),
        ("min_p", s.min_p is not None, ""),
        ("repetition_penalty", s.repetition_penalty is not None, ""),
        ("min_tokens", s.min_tokens is not None, ""),
        ("stop_token_ids", bool(s.stop_token_ids), ""),
        ("ignore_eos", s.ignore_eos, ""),
        ("return_token_ids", request.return_token_ids, ""),
    ]
    # ``seed`` is not refused: the gateway draws one for every sampled request (to record it);
    # the Messages API has none, so a sampled answer from it cannot be replayed exactly (the
    # tuple says so: ``takes_seed`` false, and no ``x-tiergate-seed`` header is sent).
    for name, refuse, what in refused:
        if refuse:
            raise unsupported(name, what)
    if s.temperature > 1.0:
        raise InvalidRequestError("temperature: the Anthropic Messages API takes 0 to 1",
                                  param="temperature", code="unsupported_parameter")


def _image(part: dict[str, Any], where: str) -> dict[str, Any]:
    image = part.get("image_url")
    url = image.get("url") if isinstance(image, dict) else image
    if not isinstance(url, str):
        raise InvalidRequestError(f"{where}: image_url needs a url", param=where)
    if url.startswith("data:"):
        header, _, data = url[5:].partition(",")
        media_type, _, encoding = header.partition(";")
        if encoding != "base64":
            raise InvalidRequestError(f"{where}: a data URL image must be base64", param=where)
        return {"type": "image", "source": {"type": "base64", "media_type": media_type,
                                            "data": data}}
    return {"type": "image", "source": {"type": "url", "url": url}}


def _blocks(content: Any, where: str) -> list[dict[str, Any]]:
    """A user or assistant message's content as Anthropic content blocks."""
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    blocks = []
    for index, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            blocks.append({"type": "text", "text": str(part.get("text", ""))})
        elif kind == "image_url":
            blocks.append(_image(part, f"{where}[{index}]"))
        else:
            raise InvalidRequestError(
                f"{where}[{index}]: content parts of type {kind!r} are not supported by the "
                "Anthropic Messages API", param=where)
    return blocks


def _tool_use(call: Any, where: str) -> dict[str, Any]:
    try:
        function = call["function"]
        arguments = function.get("arguments") or "{}"
        parsed = orjson.loads(arguments) if isinstance(arguments, str) else arguments
        if not isinstance(parsed, dict):
            raise ValueError("arguments must be a JSON object")
        return {"type": "tool_use", "id": str(call["id"]), "name": str(function["name"]),
                "input": parsed}
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        raise InvalidRequestError(f"{where}: a tool call needs an id, a function name and JSON "
                                  f"object arguments ({exc})", param=where) from exc


def translate_messages(messages: list[dict[str, Any]]
                       ) -> tuple[str | None, list[dict[str, Any]]]:
    """OpenAI chat messages → Anthropic's ``system`` and ``messages`` (consecutive turns of one
    role, tool results among them, merged into one turn)."""
    system: list[str] = []
    out: list[dict[str, Any]] = []

    def add(role: str, blocks: list[dict[str, Any]]) -> None:
        if out and out[-1]["role"] == role:
            out[-1]["content"].extend(blocks)
        else:
            out.append({"role": role, "content": blocks})

    for index, message in enumerate(messages):
        role, where = message.get("role"), f"messages[{index}]"
        content = message.get("content")
        if role in ("system", "developer"):
            system.append(message_text(content, f"{where}.content", READER))
        elif role == "user":
            add("user", _blocks(content, f"{where}.content"))
        elif role == "assistant":
            blocks = _blocks(content, f"{where}.content")
            blocks += [_tool_use(call, f"{where}.tool_calls")
                       for call in message.get("tool_calls") or []]
            add("assistant", blocks)
        elif role == "tool":
            if not message.get("tool_call_id"):
                raise InvalidRequestError(f"{where}: a tool message needs tool_call_id",
                                          param=f"{where}.tool_call_id")
            add("user", [{"type": "tool_result", "tool_use_id": str(message["tool_call_id"]),
                          "content": message_text(content, f"{where}.content", READER)}])
        else:
            raise InvalidRequestError(f"{where}: role {role!r} is not supported by the "
                                      "Anthropic Messages API", param=f"{where}.role")
    if not out:
        raise InvalidRequestError("messages: the Anthropic Messages API needs a user message "
                                  "besides the system prompt", param="messages")
    return ("\n\n".join(system) if system else None), out


def translate_tools(tools: Any) -> list[dict[str, Any]]:
    """OpenAI function tools → Anthropic tools (``input_schema``)."""
    out = []
    for index, tool in enumerate(tools or []):
        if not isinstance(tool, dict) or tool.get("type") != "function" \
                or not isinstance(tool.get("function"), dict) \
                or not isinstance(tool["function"].get("name"), str):
            raise InvalidRequestError(f"tools[{index}]: only function tools with a name are "
                                      "supported", param="tools")
        function = tool["function"]
        entry: dict[str, Any] = {
            "name": function["name"],
            "input_schema": function.get("parameters") or {"type": "object", "properties": {}}}
        if function.get("description"):
            entry["description"] = function["description"]
        out.append(entry)
    return out


def translate_tool_choice(choice: Any, parallel: Any) -> dict[str, Any] | None:
    """OpenAI ``tool_choice`` (and ``parallel_tool_calls``) → Anthropic ``tool_choice``."""
    if choice is None and parallel is None:
        return None
    if choice is None or choice == "auto":
        out: dict[str, Any] = {"type": "auto"}
    elif choice == "none":
        return {"type": "none"}
    elif choice == "required":
        out = {"type": "any"}
    elif isinstance(choice, dict) and choice.get("type") == "function" \
            and isinstance(choice.get("function"), dict) and choice["function"].get("name"):
        out = {"type": "tool", "name": str(choice["function"]["name"])}
    else:
        raise InvalidRequestError("tool_choice: 'none', 'auto', 'required' or a function",
                                  param="tool_choice")
    if parallel is False:
        out["disable_parallel_tool_use"] = True
    return out


def messages_body(request: GenerationRequest, model: str, max_tokens_default: int,
                  stream: bool) -> dict[str, Any]:
    """The Messages API request for ``request`` (a 400 for what it cannot honour)."""
    if request.kind != "chat" or request.messages is None:
        raise InvalidRequestError(
            "the Anthropic Messages API has no text completions: send this model's requests "
            "to /v1/chat/completions", param="prompt", code="unsupported_parameter")
    _check_sampling(request)
    s = request.sampling
    passthrough = dict(request.passthrough)
    tools = passthrough.pop("tools", None)
    tool_choice = translate_tool_choice(passthrough.pop("tool_choice", None),
                                        passthrough.pop("parallel_tool_calls", None))
    user = passthrough.pop("user", None)
    for name, value in passthrough.items():
        neutral = NEUTRAL_VALUES.get(name)
        if name in IGNORED_FIELDS or (neutral is not None and value in neutral):
            continue
        raise unsupported(name)
    system, messages = translate_messages(request.messages)
    body: dict[str, Any] = {"model": model, "messages": messages,
                            "max_tokens": s.max_tokens or max_tokens_default,
                            "temperature": s.temperature}
    if system is not None:
        body["system"] = system
    if s.top_p != 1.0:
        body["top_p"] = s.top_p
    if s.top_k is not None:
        body["top_k"] = s.top_k
    if s.stop:
        body["stop_sequences"] = list(s.stop)
    if tools:
        body["tools"] = translate_tools(tools)
    if tool_choice is not None and (tools or tool_choice["type"] == "none"):
        body["tool_choice"] = tool_choice
    if isinstance(user, str) and user:
        body["metadata"] = {"user_id": user}
    if stream:
        body["stream"] = True
    return body


# -- response ----------------------------------------------------------------------------------


def parse_usage(raw: Any) -> Usage:
    """Anthropic usage → OpenAI's: cached input counts as prompt tokens, as OpenAI counts it."""
    if not isinstance(raw, dict):
        return Usage()
    cache_read = int(raw.get("cache_read_input_tokens") or 0)
    prompt = int(raw.get("input_tokens") or 0) + cache_read \
        + int(raw.get("cache_creation_input_tokens") or 0)
    extra = {"prompt_tokens_details": {"cached_tokens": cache_read}} if cache_read else {}
    return Usage(prompt, int(raw.get("output_tokens") or 0), extra)


def _tool_call(block: dict[str, Any]) -> dict[str, Any]:
    return {"id": str(block["id"]), "type": "function",
            "function": {"name": str(block["name"]),
                         "arguments": orjson.dumps(block.get("input") or {}).decode()}}


def parse_message(data: Any) -> tuple[ChoiceResult, Usage]:
    """A whole Messages answer → one choice (text, tool calls) and its usage."""
    try:
        texts, calls, reasoning = [], [], []
        for block in data["content"]:
            if block["type"] == "text":
                texts.append(str(block["text"]))
            elif block["type"] == "tool_use":
                calls.append(_tool_call(block))
            elif block["type"] == "thinking":
                reasoning.append(str(block.get("thinking", "")))
        extra: dict[str, Any] = {}
        if calls:
            extra["tool_calls"] = calls
            if not texts:
                extra["content"] = None
        if reasoning:
            extra["reasoning_content"] = "".join(reasoning)
        stop_reason = data.get("stop_reason")
        choice = ChoiceResult(index=0, text="".join(texts),
                              finish_reason=FINISH_REASONS.get(stop_reason, stop_reason),
                              stop_reason=data.get("stop_sequence"), extra=extra)
        return choice, parse_usage(data.get("usage"))
    except (KeyError, TypeError, AttributeError) as exc:
        raise UpstreamError(f"upstream sent a malformed message: {exc!r}") from exc


def error_for(kind: str, message: str, retry_after: float | None = None) -> TiergateError:
    """An Anthropic error ``type`` → the error the client sees (credentials it repeats
    masked)."""
    message = redact(message)
    if kind == "overloaded_error":
        return ServiceUnavailableError(f"upstream overloaded: {message}",
                                       retry_after=retry_after or 1)
    if kind == "rate_limit_error":
        return RateLimitError(f"upstream is rate limiting: {message}",
                              retry_after=retry_after or 1)
    if kind in ("invalid_request_error", "not_found_error"):
        return InvalidRequestError(message, code="upstream_rejected_request")
    if kind in ("authentication_error", "permission_error"):
        return UpstreamError(f"upstream refused the gateway's credentials ({kind})")
    return UpstreamError(f"upstream failed: {message}")


class StreamTranslator:
    """Anthropic SSE events → chunks. Usage comes in two parts (input tokens in
    ``message_start``, output tokens in ``message_delta``) and leaves as one final chunk at
    ``message_stop``."""

    def __init__(self) -> None:
        self.usage = Usage()
        self.done = False
        self._calls: dict[int, int] = {}
        """Content block index → the tool call's index among the answer's tool calls."""

    def event(self, data: Any) -> list[GenerationChunk]:
        try:
            return self._event(data)
        except TiergateError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise UpstreamError(f"upstream sent a malformed stream event: {exc!r}") from exc

    def _event(self, data: dict[str, Any]) -> list[GenerationChunk]:
        kind = data["type"]
        if kind == "message_start":
            self.usage = parse_usage(data["message"].get("usage"))
        elif kind == "content_block_start":
            block = data["content_block"]
            if block["type"] == "tool_use":
                position = self._calls[int(data["index"])] = len(self._calls)
                call = {"index": position, "id": str(block["id"]), "type": "function",
                        "function": {"name": str(block["name"]), "arguments": ""}}
                return [GenerationChunk(index=0, extra={"tool_calls": [call]})]
            if block["type"] == "text" and block.get("text"):
                return [GenerationChunk(index=0, text=str(block["text"]))]
        elif kind == "content_block_delta":
            delta = data["delta"]
            if delta["type"] == "text_delta":
                return [GenerationChunk(index=0, text=str(delta["text"]))]
            if delta["type"] == "input_json_delta":
                call = {"index": self._calls[int(data["index"])],
                        "function": {"arguments": str(delta["partial_json"])}}
                return [GenerationChunk(index=0, extra={"tool_calls": [call]})]
            if delta["type"] == "thinking_delta":
                return [GenerationChunk(index=0,
                                        extra={"reasoning_content": str(delta["thinking"])})]
        elif kind == "message_delta":
            usage = data.get("usage") or {}
            if usage.get("output_tokens") is not None:  # cumulative
                self.usage.completion_tokens = int(usage["output_tokens"])
            if usage.get("input_tokens") is not None:
                self.usage.prompt_tokens = parse_usage(usage).prompt_tokens
            stop_reason = data["delta"].get("stop_reason")
            if stop_reason is not None:
                return [GenerationChunk(
                    index=0, finish_reason=FINISH_REASONS.get(stop_reason, stop_reason),
                    stop_reason=data["delta"].get("stop_sequence"))]
        elif kind == "message_stop":
            self.done = True
            return [GenerationChunk(index=None, usage=self.usage)]
        elif kind == "error":
            error = data.get("error") or {}
            raise error_for(str(error.get("type")), str(error.get("message") or "error"))
        return []  # ping, content_block_stop, signature deltas, event types added later
