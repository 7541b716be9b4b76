"""OpenAI's Responses API (``/v1/responses``): the request, typed, with its translation to a
chat :class:`GenerationRequest`, and the ``response`` object and stream events built from a
chat result.

tiergate serves Responses statelessly, over the same models, routes, records and replay as
chat: ``instructions`` become a system message, ``input`` (text, or items: messages, prior
turns' output, function calls and their outputs) the messages; ``max_output_tokens``,
``temperature``, ``top_p`` and ``seed`` the sampling parameters; ``text.format`` the chat
``response_format``; function ``tools`` and ``tool_choice`` their chat forms. What has no chat
form (built-in tools such as ``web_search``, ``previous_response_id``, ``conversation``,
``background``) is a clear 400.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Annotated, Any, ClassVar, Literal

import orjson
from pydantic import Field, model_validator

from gateway.kernel.errors import InvalidRequestError
from gateway.kernel.generation import (
    ChoiceResult,
    GenerationChunk,
    GenerationRequest,
    GenerationResult,
    TokenLogprob,
    Usage,
)
from gateway.protocol.limits import LimitsSettings
from gateway.protocol.requests import FreeList, SamplingFields, TokenBudget, TopLogprobs

_ROLES = {"user", "system", "developer", "assistant"}
_TEXT_PARTS = {"input_text", "output_text", "text"}
LOGPROBS_INCLUDE = "message.output_text.logprobs"


class ResponsesRequest(SamplingFields):
    """``POST /v1/responses``. Unknown fields are kept and passed on, as for chat."""

    input: Annotated[str, Field(min_length=1)] | Annotated[FreeList, Field(min_length=1)]
    instructions: str | None = None
    max_output_tokens: TokenBudget | None = None
    top_logprobs: TopLogprobs | None = None
    include: list[str] | None = None
    text: dict[str, Any] | None = None
    tools: FreeList | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    previous_response_id: str | None = None
    conversation: str | dict[str, Any] | None = None
    background: bool | None = None
    store: bool | None = None
    metadata: dict[str, Any] | None = None
    reasoning: dict[str, Any] | None = None
    truncation: Literal["auto", "disabled"] | None = None

    free_form_fields: ClassVar[tuple[str, ...]] = (
        "input", "text", "tools", "tool_choice", "metadata", "reasoning", "conversation")

    @model_validator(mode="after")
    def _stateless(self) -> ResponsesRequest:
        if (self.n or 1) != 1:
            raise ValueError("a response has one output: n must be 1")
        return self

    def check_limits(self, limits: LimitsSettings) -> None:
        super().check_limits(limits)
        if isinstance(self.input, list) and len(self.input) > limits.max_messages:
            raise InvalidRequestError(f"input: at most {limits.max_messages} items, not "
                                      f"{len(self.input)}", param="input")

    def check_stateless(self) -> None:
        """What a stateless gateway cannot do, refused by name."""
        for name in ("previous_response_id", "conversation"):
            if getattr(self, name) is not None:
                raise InvalidRequestError(
                    f"{name}: tiergate does not store responses; send the earlier turns in "
                    "'input' instead", param=name, code="unsupported_parameter")
        if self.background:
            raise InvalidRequestError("background: tiergate answers in the request",
                                      param="background", code="unsupported_parameter")

    def asked_logprobs(self) -> int | None:
        """``top_logprobs`` when the output text's logprobs are asked for (``include``)."""
        asked = self.include is not None and LOGPROBS_INCLUDE in self.include
        return (self.top_logprobs or 0) if asked or self.top_logprobs else None

    def messages(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        if self.instructions:
            out.append({"role": "system", "content": self.instructions})
        if isinstance(self.input, str):
            out.append({"role": "user", "content": self.input})
            return out
        for index, item in enumerate(self.input):
            out.append(_chat_message(item, index))
        return out

    def _chat_fields(self) -> dict[str, Any]:
        """The fields with a chat form, in it."""
        fields: dict[str, Any] = {}
        if self.tools is not None:
            fields["tools"] = [_chat_tool(t, i) for i, t in enumerate(self.tools)]
        if self.tool_choice is not None:
            fields["tool_choice"] = _chat_tool_choice(self.tool_choice)
        fmt = (self.text or {}).get("format")
        if fmt is not None:
            fields["response_format"] = _response_format(fmt)
        if self.reasoning and self.reasoning.get("effort") is not None:
            fields["reasoning_effort"] = self.reasoning["effort"]
        for name in ("parallel_tool_calls", "store", "metadata", "user"):
            if name in self.model_fields_set and getattr(self, name) is not None:
                fields[name] = getattr(self, name)
        return fields

    def to_generation_request(self, request_id: str) -> GenerationRequest:
        self.check_stateless()
        return GenerationRequest(
            request_id=request_id,
            kind="chat",
            sampling=self._sampling(self.max_output_tokens, self.asked_logprobs()),
            messages=self.messages(),
            passthrough={**(self.model_extra or {}), **self._chat_fields()},
            return_token_ids=bool(self.return_token_ids),
            max_tokens_field="max_completion_tokens",
        )


# -- request translation -----------------------------------------------------------------------


def _text_part(part: Any, where: str) -> dict[str, Any]:
    if not isinstance(part, dict):
        raise InvalidRequestError(f"{where}: a content part is an object", param=where)
    kind = part.get("type")
    if kind in _TEXT_PARTS and isinstance(part.get("text"), str):
        return {"type": "text", "text": part["text"]}
    if kind == "input_image" and isinstance(part.get("image_url"), str):
        image = {"url": part["image_url"]}
        if part.get("detail") is not None:
            image["detail"] = part["detail"]
        return {"type": "image_url", "image_url": image}
    if kind == "refusal" and isinstance(part.get("refusal"), str):
        return {"type": "text", "text": part["refusal"]}
    raise InvalidRequestError(f"{where}: content parts of type {kind!r} are not supported "
                              "(input_text, output_text, input_image)", param=where)


def _chat_message(item: dict[str, Any], index: int) -> dict[str, Any]:
    where = f"input.{index}"
    kind = item.get("type", "message")
    if kind == "message" and item.get("role") in _ROLES:
        content = item.get("content")
        if isinstance(content, str):
            return {"role": item["role"], "content": content}
        if isinstance(content, list):
            parts = [_text_part(p, f"{where}.content.{i}") for i, p in enumerate(content)]
            return {"role": item["role"], "content": parts}
        raise InvalidRequestError(f"{where}: content is a string or a list of parts",
                                  param=f"{where}.content")
    if kind == "function_call" and isinstance(item.get("name"), str):
        call = {"id": item.get("call_id") or item.get("id"), "type": "function",
                "function": {"name": item["name"], "arguments": item.get("arguments") or ""}}
        return {"role": "assistant", "content": None, "tool_calls": [call]}
    if kind == "function_call_output" and isinstance(item.get("call_id"), str):
        output = item.get("output")
        return {"role": "tool", "tool_call_id": item["call_id"],
                "content": output if isinstance(output, str) else orjson.dumps(output).decode()}
    raise InvalidRequestError(f"{where}: items of type {kind!r} are not supported (message, "
                              "function_call, function_call_output)", param=where)


def _chat_tool(tool: dict[str, Any], index: int) -> dict[str, Any]:
    if tool.get("type") != "function" or not isinstance(tool.get("name"), str):
        raise InvalidRequestError(
            f"tools.{index}: only function tools are supported (not {tool.get('type')!r})",
            param=f"tools.{index}", code="unsupported_parameter")
    function = {k: v for k, v in tool.items() if k != "type"}
    return {"type": "function", "function": function}


def _chat_tool_choice(choice: str | dict[str, Any]) -> str | dict[str, Any]:
    if isinstance(choice, dict) and choice.get("type") == "function" and "name" in choice:
        return {"type": "function", "function": {"name": choice["name"]}}
    return choice


def _response_format(fmt: Any) -> dict[str, Any]:
    if isinstance(fmt, dict) and fmt.get("type") in ("text", "json_object"):
        return {"type": fmt["type"]}
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        schema = {k: v for k, v in fmt.items() if k != "type"}
        return {"type": "json_schema", "json_schema": schema}
    raise InvalidRequestError("text.format: one of text, json_object, json_schema",
                              param="text.format")


def responses_param(param: str | None) -> str | None:
    """A chat field a model refused, named as the Responses request names it."""
    return {"response_format": "text.format", "max_completion_tokens": "max_output_tokens",
            "messages": "input"}.get(param or "", param)


# -- the response --------------------------------------------------------------------------------


def response_usage(usage: Usage) -> dict[str, Any]:
    details = usage.extra.get("prompt_tokens_details") or {}
    out_details = usage.extra.get("completion_tokens_details") or {}
    return {"input_tokens": usage.prompt_tokens,
            "input_tokens_details": {"cached_tokens": details.get("cached_tokens") or 0},
            "output_tokens": usage.completion_tokens,
            "output_tokens_details": {"reasoning_tokens":
                                      out_details.get("reasoning_tokens") or 0},
            "total_tokens": usage.total_tokens}


def logprobs_of(logprobs: list[TokenLogprob] | None) -> list[dict[str, Any]]:
    return [{"token": lp.token, "logprob": lp.logprob,
             "bytes": lp.bytes if lp.bytes is not None else list(lp.token.encode()),
             "top_logprobs": [{"token": t.token, "logprob": t.logprob,
                               "bytes": t.bytes if t.bytes is not None else list(t.token.encode())}
                              for t in lp.top]}
            for lp in logprobs or []]


def text_part(text: str, logprobs: list[TokenLogprob] | None = None) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [],
            "logprobs": logprobs_of(logprobs)}


def message_item(item_id: str, parts: list[dict[str, Any]],
                 status: str = "completed") -> dict[str, Any]:
    return {"id": item_id, "type": "message", "status": status, "role": "assistant",
            "content": parts}


def function_items(request_id: str, tool_calls: Any) -> list[dict[str, Any]]:
    items = []
    for i, call in enumerate(tool_calls or []):
        function = call.get("function") or {}
        items.append({"id": f"fc_{request_id}_{i}", "type": "function_call",
                      "status": "completed", "call_id": call.get("id") or f"call_{i}",
                      "name": function.get("name"), "arguments": function.get("arguments")
                      or ""})
    return items


def output_items(choice: ChoiceResult, request_id: str) -> list[dict[str, Any]]:
    parts = []
    if choice.text or not choice.extra.get("tool_calls"):
        parts.append(text_part(choice.text, choice.logprobs))
    if isinstance(choice.extra.get("refusal"), str):
        parts.append({"type": "refusal", "refusal": choice.extra["refusal"]})
    items = [message_item(f"msg_{request_id}", parts)] if parts else []
    return items + function_items(request_id, choice.extra.get("tool_calls"))


def status_of(finish_reason: str | None) -> tuple[str, dict[str, Any] | None]:
    if finish_reason == "length":
        return "incomplete", {"reason": "max_output_tokens"}
    if finish_reason == "content_filter":
        return "incomplete", {"reason": "content_filter"}
    return "completed", None


def response_object(req: ResponsesRequest, gen: GenerationRequest, request_id: str,
                    model_name: str, created: int | None = None, *,
                    result: GenerationResult | None = None,
                    usage: Usage | None = None) -> dict[str, Any]:
    """The ``response`` object: in progress (no ``result``), or complete."""
    body: dict[str, Any] = {
        "id": f"resp_{request_id}", "object": "response",
        "created_at": created if created is not None else int(time.time()),
        "status": "in_progress", "error": None, "incomplete_details": None,
        "instructions": req.instructions, "max_output_tokens": req.max_output_tokens,
        "model": model_name, "output": [],
        "parallel_tool_calls": req.parallel_tool_calls is not False,
        "previous_response_id": None, "reasoning": req.reasoning or {"effort": None,
                                                                     "summary": None},
        "store": False, "temperature": gen.sampling.temperature,
        "text": req.text or {"format": {"type": "text"}},
        "tool_choice": req.tool_choice if req.tool_choice is not None else "auto",
        "tools": req.tools or [], "top_p": gen.sampling.top_p, "truncation": "disabled",
        "usage": None, "user": req.user, "metadata": req.metadata or {},
    }
    if result is not None:
        choice = result.choices[0]
        body["output"] = output_items(choice, request_id)
        body["status"], body["incomplete_details"] = status_of(choice.finish_reason)
        body["usage"] = response_usage(usage or result.usage)
    return body


class ResponseStream:
    """The events of one streamed response, in OpenAI's order: ``response.created``,
    ``response.in_progress``; the message item and its text part opened, ``output_text.delta``
    per chunk, then closed; each function call as an item; ``response.completed`` (or
    ``response.incomplete``) with the whole response and its usage."""

    def __init__(self, req: ResponsesRequest, gen: GenerationRequest, request_id: str,
                 model_name: str) -> None:
        self.req, self.gen, self.request_id, self.model = req, gen, request_id, model_name
        self.created = int(time.time())
        self.sequence = 0
        self.item_id = f"msg_{request_id}"
        self.opened = False
        self.texts: list[str] = []
        self.logprobs: list[TokenLogprob] = []
        self.calls: dict[int, dict[str, Any]] = {}

    def _event(self, kind: str, **fields: Any) -> bytes:
        data = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"

    def _response(self, result: GenerationResult | None = None,
                  usage: Usage | None = None) -> dict[str, Any]:
        return response_object(self.req, self.gen, self.request_id, self.model, self.created,
                               result=result, usage=usage)

    def start(self) -> bytes:
        return (self._event("response.created", response=self._response())
                + self._event("response.in_progress", response=self._response()))

    def _open(self) -> bytes:
        self.opened = True
        return (self._event("response.output_item.added", output_index=0,
                            item=message_item(self.item_id, [], "in_progress"))
                + self._event("response.content_part.added", item_id=self.item_id,
                              output_index=0, content_index=0, part=text_part("")))

    def event(self, chunk: GenerationChunk) -> bytes:
        """The events of one :class:`GenerationChunk` (empty when it adds nothing)."""
        out = b""
        if chunk.index is None:
            return out
        if chunk.text:
            if not self.opened:
                out += self._open()
            self.texts.append(chunk.text)
            self.logprobs += chunk.logprobs or []
            out += self._event("response.output_text.delta", item_id=self.item_id,
                               output_index=0, content_index=0, delta=chunk.text,
                               logprobs=logprobs_of(chunk.logprobs))
        for delta in chunk.extra.get("tool_calls") or []:
            call = self.calls.setdefault(int(delta.get("index", len(self.calls))),
                                         {"id": None, "function": {"name": "", "arguments": ""}})
            call["id"] = delta.get("id") or call["id"]
            function = delta.get("function") or {}
            call["function"]["name"] += function.get("name") or ""
            call["function"]["arguments"] += function.get("arguments") or ""
        return out

    def end(self, result: GenerationResult, usage: Usage | None) -> bytes:
        text = "".join(self.texts)
        calls = [self.calls[i] for i in sorted(self.calls)]
        choice = result.choices[0]
        whole = ChoiceResult(0, text, choice.finish_reason,
                             logprobs=self.logprobs if self.gen.sampling.logprobs is not None
                             else None, extra={"tool_calls": calls} if calls else {})
        out = b""
        if self.opened or not calls:
            if not self.opened:
                out += self._open()
            part = text_part(text, whole.logprobs)
            out += (self._event("response.output_text.done", item_id=self.item_id,
                                output_index=0, content_index=0, text=text,
                                logprobs=part["logprobs"])
                    + self._event("response.content_part.done", item_id=self.item_id,
                                  output_index=0, content_index=0, part=part)
                    + self._event("response.output_item.done", output_index=0,
                                  item=message_item(self.item_id, [part])))
        first = 1 if self.opened else 0
        for position, item in enumerate(function_items(self.request_id, calls), first):
            out += (self._event("response.output_item.added", output_index=position,
                                item={**item, "status": "in_progress", "arguments": ""})
                    + self._event("response.function_call_arguments.done", item_id=item["id"],
                                  output_index=position, arguments=item["arguments"])
                    + self._event("response.output_item.done", output_index=position,
                                  item=item))
        final = self._response(replace_choice(result, whole), usage)
        kind = "response.completed" if final["status"] == "completed" else "response.incomplete"
        return out + self._event(kind, response=final)

    def error(self, body: dict[str, Any]) -> bytes:
        error = body.get("error") or {}
        failed = self._response()
        failed["status"] = "failed"
        failed["error"] = {"code": error.get("code") or error.get("type"),
                           "message": error.get("message")}
        return (self._event("error", code=error.get("code") or error.get("type"),
                            message=error.get("message"), param=error.get("param"))
                + self._event("response.failed", response=failed))


def replace_choice(result: GenerationResult, choice: ChoiceResult) -> GenerationResult:
    return replace(result, choices=[choice])
