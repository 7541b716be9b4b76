"""A scriptable fake of the Anthropic Messages API: a real aiohttp server for tests.

It follows Anthropic's documented wire format: ``POST /v1/messages`` with ``x-api-key`` and
``anthropic-version`` (401 / 400 in Anthropic's error shape without them), ``max_tokens``
required, ``system`` top-level only, roles ``user`` / ``assistant``; answers as a ``message``
object or, with ``stream: true``, as the SSE events ``message_start``, ``content_block_start``,
``ping``, ``content_block_delta`` (``text_delta``, ``input_json_delta``),
``content_block_stop``, ``message_delta`` (``stop_reason``, cumulative ``usage``) and
``message_stop``. ``GET /v1/models/{id}`` describes a model. The model's name selects the
behaviour:

==================  ==========================================================================
``claude-echo``     answers ``"echo: <last user text>"`` (a tool result's text too), in ~10
                    text deltas when streamed; honours ``max_tokens`` (in deltas, then
                    ``stop_reason: max_tokens``) and ``stop_sequences``
``claude-tools``    with ``tools``: a ``tool_use`` block calling the first tool with
                    ``{"q": "<last user text>"}`` (``stop_reason: tool_use``); once the
                    conversation holds a ``tool_result``: answers like ``claude-echo``
``claude-overload`` streams ``message_start``, then an ``error`` event (``overloaded_error``)
``status-NNN``      answers HTTP NNN with Anthropic's error body, repeating the last user text
                    (``retry-after: 3`` on 429/529)
==================  ==========================================================================

``GET /last`` shows the last request body and headers (the key among them: a test server).

Run: ``python -m gateway.testing.anthropic_upstream --port 9002 --api-key KEY``.
"""

from __future__ import annotations

import argparse
from typing import Any

import orjson
from aiohttp import web

MODELS = ["claude-echo", "claude-tools", "claude-overload", "status-400", "status-429",
          "status-500", "status-529"]
DELTAS = 10
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
               429: "rate_limit_error", 500: "api_error", 529: "overloaded_error"}


def error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    body = {"type": "error", "error": {"type": ERROR_TYPES.get(status, "api_error"),
                                       "message": message}}
    return web.json_response(body, status=status, headers=headers)


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    texts = []
    for block in content:
        if block.get("type") == "text":
            texts.append(block["text"])
        elif block.get("type") == "tool_result":
            texts.append(_text(block.get("content") or ""))
    return " ".join(texts)


def _check(body: dict[str, Any]) -> str | None:
    """What Anthropic would refuse in ``body`` (a few of its rules), or None."""
    if not isinstance(body.get("max_tokens"), int):
        return "max_tokens: Field required"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "messages: at least one message is required"
    for index, message in enumerate(messages):
        if message.get("role") not in ("user", "assistant"):
            return f"messages.{index}.role: Input should be 'user' or 'assistant'"
    if messages[0]["role"] != "user":
        return "messages: first message must use the \"user\" role"
    if not 0 <= body.get("temperature", 1) <= 1:
        return "temperature: Input should be less than or equal to 1"
    return None


class FakeAnthropic:
    def __init__(self, api_key: str) -> None:
        self.api_key = api_key
        self.last_body: dict[str, Any] | None = None
        self.last_headers: dict[str, str] = {}

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/messages", self.messages)
        app.router.add_get("/v1/models/{model}", self.model)
        app.router.add_get("/last", self.last)
        return app

    async def last(self, request: web.Request) -> web.Response:
        return web.json_response({"body": self.last_body, "headers": self.last_headers})

    async def model(self, request: web.Request) -> web.Response:
        model = request.match_info["model"]
        if request.headers.get("x-api-key") != self.api_key:
            return error(401, "invalid x-api-key")
        if model not in MODELS:
            return error(404, f"model: {model}")
        return web.json_response({"type": "model", "id": model, "display_name": model,
                                  "created_at": "2025-01-01T00:00:00Z"})

    async def messages(self, request: web.Request) -> web.StreamResponse:
        self.last_headers = dict(request.headers)
        if request.headers.get("x-api-key") != self.api_key:
            return error(401, "invalid x-api-key")
        if not request.headers.get("anthropic-version"):
            return error(400, "anthropic-version: header is required")
        body = orjson.loads(await request.read())
        self.last_body = body
        problem = _check(body)
        if problem:
            return error(400, problem)
        model = str(body.get("model"))
        if model.startswith("status-"):
            status = int(model.split("-")[1])
            headers = {"retry-after": "3"} if status in (429, 529) else None
            last = _text(body["messages"][-1]["content"])  # repeated, as servers often do
            return error(status, f"fake anthropic error {status} for: {last}", headers)
        blocks, stop_reason, stop_sequence = self._answer(body, model)
        words = len(str(body.get("system") or "").split()) + sum(
            len(_text(m["content"]).split()) for m in body["messages"])
        usage = {"input_tokens": words,
                 "output_tokens": sum(len(b["pieces"]) for b in blocks)}
        if body.get("stream"):
            return await self._stream(request, body, model, blocks, stop_reason, stop_sequence,
                                      usage)
        content = [{"type": "text", "text": "".join(b["pieces"])} if b["type"] == "text"
                   else {"type": "tool_use", "id": b["id"], "name": b["name"],
                         "input": orjson.loads("".join(b["pieces"]))} for b in blocks]
        return web.json_response({
            "id": "msg_fake1", "type": "message", "role": "assistant", "model": model,
            "content": content, "stop_reason": stop_reason, "stop_sequence": stop_sequence,
            "usage": usage})

    def _answer(self, body: dict[str, Any], model: str
                ) -> tuple[list[dict[str, Any]], str, str | None]:
        """The answer's blocks (each in pieces, one piece a 'token'), stop reason, stop
        sequence."""
        last = _text(body["messages"][-1]["content"])
        has_result = any(isinstance(m["content"], list) and any(
            b.get("type") == "tool_result" for b in m["content"]) for m in body["messages"])
        if model == "claude-tools" and body.get("tools") and not has_result:
            arguments = orjson.dumps({"q": last}).decode()
            pieces = [arguments[i:i + 5] for i in range(0, len(arguments), 5)]
            return [{"type": "tool_use", "id": "toolu_fake1", "name": body["tools"][0]["name"],
                     "pieces": pieces}], "tool_use", None
        text = f"echo: {last}"
        stop_reason, stop_sequence = "end_turn", None
        for sequence in body.get("stop_sequences") or []:
            if sequence in text:
                text, stop_reason, stop_sequence = text[:text.index(sequence)], \
                    "stop_sequence", sequence
        size = max(1, -(-len(text) // DELTAS))
        pieces = [text[i:i + size] for i in range(0, len(text), size)]
        if len(pieces) > body["max_tokens"]:
            pieces, stop_reason, stop_sequence = pieces[:body["max_tokens"]], "max_tokens", None
        return [{"type": "text", "pieces": pieces}], stop_reason, stop_sequence

    async def _stream(self, request: web.Request, body: dict[str, Any], model: str,
                      blocks: list[dict[str, Any]], stop_reason: str,
                      stop_sequence: str | None, usage: dict[str, int]) -> web.StreamResponse:
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)

        async def send(event: str, data: dict[str, Any]) -> None:
            await response.write(f"event: {event}\ndata: ".encode() + orjson.dumps(data)
                                 + b"\n\n")

        await send("message_start", {"type": "message_start", "message": {
            "id": "msg_fake1", "type": "message", "role": "assistant", "model": model,
            "content": [], "stop_reason": None, "stop_sequence": None,
            "usage": {"input_tokens": usage["input_tokens"], "output_tokens": 1}}})
        if model == "claude-overload":
            await send("error", {"type": "error", "error": {"type": "overloaded_error",
                                                            "message": "Overloaded"}})
            return response
        for index, block in enumerate(blocks):
            if block["type"] == "text":
                start: dict[str, Any] = {"type": "text", "text": ""}
            else:
                start = {"type": "tool_use", "id": block["id"], "name": block["name"],
                         "input": {}}
            await send("content_block_start", {"type": "content_block_start", "index": index,
                                               "content_block": start})
            if index == 0:
                await send("ping", {"type": "ping"})
            for piece in block["pieces"]:
                delta = {"type": "text_delta", "text": piece} if block["type"] == "text" \
                    else {"type": "input_json_delta", "partial_json": piece}
                await send("content_block_delta", {"type": "content_block_delta",
                                                   "index": index, "delta": delta})
            await send("content_block_stop", {"type": "content_block_stop", "index": index})
        await send("message_delta", {"type": "message_delta", "delta": {
            "stop_reason": stop_reason, "stop_sequence": stop_sequence},
            "usage": {"output_tokens": usage["output_tokens"]}})
        await send("message_stop", {"type": "message_stop"})
        return response


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9002)
    parser.add_argument("--api-key", required=True)
    args = parser.parse_args(argv)
    web.run_app(FakeAnthropic(args.api_key).app(), host=args.host, port=args.port, print=None,
                access_log=None)


if __name__ == "__main__":
    main()
