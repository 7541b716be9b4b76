"""A scriptable OpenAI-compatible upstream: a real aiohttp server for tests and benchmarks.

Its models' names select how it behaves, so one process can play a healthy upstream and every
kind of broken one:

=================  ==============================================================================
``echo``           answers ``"echo: <last user message or prompt>"``, in ~20 SSE chunks when
                   streamed; honours ``n``, ``max_tokens`` (in chunks), ``logprobs``, ``seed``
``cut``            streams a few chunks, then drops the connection (no ``[DONE]``)
``stream-error``   streams a few chunks, then an SSE ``{"error": ...}`` event
``pretty``         answers like ``echo``, its JSON body indented over several lines (as some
                   servers send it)
``garbage``        200 with a body that is not JSON (or not SSE)
``html``           200 with ``text/html``
``status-NNN``     answers HTTP NNN with an OpenAI error body (``Retry-After: 2`` on 429/503)
``slow-MS``        waits MS milliseconds before the response headers
``stall-MS``       sends the headers and the first chunk, then waits MS milliseconds per chunk
``paced-MS``       a model decoding at 1000/MS tokens/s: the headers and the first chunk at once,
                   then one chunk every MS milliseconds (``paced-10``: 100 tokens/s)
``tools``          answers chat with a tool call, as OpenAI does: ``content: null``,
                   ``refusal: null``, ``annotations: []`` and a field of its own
=================  ==============================================================================

``/v1/responses`` (its own Responses API) answers ``"responses: <input>"`` — a marker that the
request was forwarded, not translated to chat — whole or as OpenAI's events (``response.created``,
``response.output_text.delta`` per piece, ``response.completed`` with ``usage``); ``status-NNN``
and ``cut`` behave there as for chat. ``/v1/embeddings`` answers every model with vectors that
say what they embed. It is also an OTLP/HTTP trace receiver (``POST /v1/traces``) for
telemetry tests.

Every request it served is counted at ``GET /stats`` (``{"requests": N, "open_streams": K}``), so
tests can check that cancelled requests really ended upstream.

Run: ``python -m gateway.testing.upstream --port 9001``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import struct
import time
from typing import Any

import orjson
from aiohttp import web

MODELS = ["echo", "tools", "pretty", "cut", "stream-error", "garbage", "html", "status-400",
          "status-429", "status-500", "status-503", "slow-2000", "stall-500", "paced-10"]
CHUNKS = 20


def _text_of(body: dict[str, Any]) -> str:
    if "messages" in body:
        content = body["messages"][-1].get("content") or ""
        return content if isinstance(content, str) else " ".join(
            p.get("text", "") for p in content if isinstance(p, dict))
    prompt = body.get("prompt", "")
    return prompt if isinstance(prompt, str) else " ".join(map(str, prompt))


def _prompts(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The body once per prompt of a completion batch (a list of strings or of token-id
    lists); the body itself otherwise."""
    prompt = body.get("prompt")
    if "messages" not in body and isinstance(prompt, list) and prompt \
            and isinstance(prompt[0], str | list):
        return [{**body, "prompt": p} for p in prompt]
    return [body]


def _pieces(body: dict[str, Any]) -> tuple[list[str], str]:
    """The answer in CHUNKS pieces (one piece = one 'token'), cut at max_tokens, and why it
    finished."""
    text = f"echo: {_text_of(body)}"
    size = max(1, -(-len(text) // CHUNKS))
    pieces = [text[i:i + size] for i in range(0, len(text), size)]
    limit = body.get("max_completion_tokens") or body.get("max_tokens")
    if isinstance(limit, int) and limit < len(pieces):
        return pieces[:limit], "length"
    return pieces, "stop"


def _logprob_item(piece: str, i: int, top: int) -> dict[str, Any]:
    return {"token": piece, "logprob": -0.01 * (i + 1), "bytes": list(piece.encode()),
            "top_logprobs": [{"token": piece, "logprob": -0.01 * (i + 1),
                              "bytes": list(piece.encode())}][:top]}


class FakeUpstream:
    def __init__(self) -> None:
        self.requests = 0
        self.responses = 0
        """Requests served at ``/v1/responses``."""
        self.open_streams = 0
        self.last_body: dict[str, Any] | None = None
        self.last_headers: dict[str, str] = {}
        self.trace_exports: list[bytes] = []

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/stats", self.stats)
        app.router.add_get("/last", self.last)
        app.router.add_post("/v1/traces", self.traces)
        app.router.add_post("/v1/chat/completions", self.robust_complete)
        app.router.add_post("/v1/completions", self.robust_complete)
        app.router.add_post("/v1/embeddings", self.embeddings)
        app.router.add_post("/v1/responses", self.respond)
        return app

    async def embeddings(self, request: web.Request) -> web.Response:
        """Embeddings that say what they embed: ``[characters (or ids), position, 0.5]``, as
        floats or base64 (``encoding_format``)."""
        self.requests += 1
        body = orjson.loads(await request.read())
        self.last_body = body
        inputs = body["input"]
        if isinstance(inputs, str) or (inputs and isinstance(inputs[0], int)):
            inputs = [inputs]
        data = []
        for index, item in enumerate(inputs):
            vector = [float(len(item)), float(index), 0.5]
            value: Any = vector
            if body.get("encoding_format") == "base64":
                value = base64.b64encode(struct.pack("<3f", *vector)).decode()
            data.append({"object": "embedding", "index": index, "embedding": value})
        tokens = sum(len(str(item).split()) for item in inputs)
        return web.json_response({"object": "list", "data": data, "model": body.get("model"),
                                  "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})

    async def models(self, request: web.Request) -> web.Response:
        cards = [{"id": m, "object": "model", "created": 0, "owned_by": "fake"} for m in MODELS]
        return web.json_response({"object": "list", "data": cards})

    async def stats(self, request: web.Request) -> web.Response:
        return web.json_response({"requests": self.requests, "open_streams": self.open_streams,
                                  "responses": self.responses,
                                  "trace_exports": [e.hex() for e in self.trace_exports]})

    async def traces(self, request: web.Request) -> web.Response:
        """An OTLP/HTTP trace receiver (protobuf bodies kept as they came)."""
        self.trace_exports.append(await request.read())
        return web.Response(body=b"", content_type="application/x-protobuf")

    async def last(self, request: web.Request) -> web.Response:
        return web.json_response({"body": self.last_body, "headers": self.last_headers})

    async def robust_complete(self, request: web.Request) -> web.StreamResponse:
        """Like a real server: input it cannot use is a 400, never a crash."""
        try:
            return await self.complete(request)
        except (ValueError, TypeError, KeyError, AttributeError, IndexError) as exc:
            error = {"message": f"fake upstream cannot use this request: {exc!r}",
                     "type": "invalid_request_error", "param": None, "code": None}
            return web.json_response({"error": error}, status=400)

    async def complete(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        body = orjson.loads(await request.read())
        self.last_body = body
        self.last_headers = dict(request.headers)
        model = str(body.get("model", "echo"))
        chat = request.path.endswith("/chat/completions")
        if model.startswith("status-"):
            status = int(model.split("-")[1])
            headers = {"retry-after": "2"} if status in (429, 503) else {}
            error = {"message": f"fake upstream error {status}", "type": "fake", "param": None,
                     "code": None}
            return web.json_response({"error": error}, status=status, headers=headers)
        if model.startswith("slow-"):
            await asyncio.sleep(int(model.split("-")[1]) / 1000)
        if model == "html":
            return web.Response(text="<html>oops</html>", content_type="text/html")
        if model == "garbage" and not body.get("stream"):
            return web.Response(body=b"{not json", content_type="application/json")
        if model == "tools" and chat:
            return await self._tool_call(request, body)
        if body.get("stream"):
            return await self._stream(request, body, model, chat)
        option = orjson.OPT_INDENT_2 if model == "pretty" else None
        return web.Response(body=orjson.dumps(self._whole(body, model, chat), option=option),
                            content_type="application/json")

    async def respond(self, request: web.Request) -> web.StreamResponse:
        """``/v1/responses``: ``"responses: <input>"`` in CHUNKS pieces, cut at
        ``max_output_tokens`` (then ``incomplete``)."""
        self.requests += 1
        self.responses += 1
        body = orjson.loads(await request.read())
        self.last_body, self.last_headers = body, dict(request.headers)
        model = str(body.get("model", "echo"))
        if model.startswith("status-"):
            status = int(model.split("-")[1])
            error = {"message": f"fake upstream error {status}", "type": "fake", "param": None,
                     "code": None}
            return web.json_response({"error": error}, status=status)
        given = body.get("input")
        if isinstance(given, list):
            content = given[-1].get("content") if given and isinstance(given[-1], dict) else ""
            given = content if isinstance(content, str) else " ".join(
                str(p.get("text", "")) for p in content or [] if isinstance(p, dict))
        text = f"responses: {given}"
        size = max(1, -(-len(text) // CHUNKS))
        pieces = [text[i:i + size] for i in range(0, len(text), size)]
        limit = body.get("max_output_tokens")
        complete = not (isinstance(limit, int) and limit < len(pieces))
        pieces = pieces if complete else pieces[:limit]
        whole = {
            "id": "resp_fake", "object": "response", "created_at": int(time.time()),
            "model": model, "status": "completed" if complete else "incomplete",
            "incomplete_details": None if complete else {"reason": "max_output_tokens"},
            "output": [{"type": "message", "id": "msg_fake", "role": "assistant",
                        "status": "completed", "content": [
                            {"type": "output_text", "text": "".join(pieces),
                             "annotations": []}]}],
            "parallel_tool_calls": True, "tool_choice": "auto", "tools": [],
            "usage": {"input_tokens": len(str(given).split()), "output_tokens": len(pieces),
                      "total_tokens": len(str(given).split()) + len(pieces)},
        }
        if not body.get("stream"):
            return web.json_response(whole)
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        started = {**whole, "status": "in_progress", "output": [], "usage": None}
        events: list[tuple[str, dict[str, Any]]] = [("response.created", {"response": started})]
        events += [("response.output_text.delta", {"item_id": "msg_fake", "output_index": 0,
                                                   "content_index": 0, "delta": piece,
                                                   "logprobs": []}) for piece in pieces]
        events.append(("response.completed" if complete else "response.incomplete",
                       {"response": whole}))
        for number, (kind, fields) in enumerate(events):
            if model == "cut" and number == 3:
                request.transport.close()  # type: ignore[union-attr]
                return response
            data = {"type": kind, "sequence_number": number, **fields}
            await response.write(b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(data)
                                 + b"\n\n")
        return response

    async def _tool_call(self, request: web.Request, body: dict[str, Any]
                         ) -> web.StreamResponse:
        """A tool call with OpenAI's nulls, whole or streamed."""
        call = {"id": "call_1", "type": "function",
                "function": {"name": "lookup", "arguments": '{"q": "x"}'}}
        envelope = {"id": "fake-tools", "created": int(time.time()), "model": "tools",
                    "system_fingerprint": None, "service_tier": "default"}
        usage = {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}
        message = {"role": "assistant", "content": None, "refusal": None, "annotations": [],
                   "tool_calls": [call], "provider_note": {"kept": True}}
        if not body.get("stream"):
            return web.json_response({**envelope, "object": "chat.completion", "choices": [
                {"index": 0, "message": message, "logprobs": None,
                 "finish_reason": "tool_calls"}], "usage": usage})
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        deltas = [({"role": "assistant", "content": None, "refusal": None,
                    "tool_calls": [{**call, "index": 0}]}, None), ({}, "tool_calls")]
        for delta, finish in deltas:
            chunk = {**envelope, "object": "chat.completion.chunk", "choices": [
                {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
            await response.write(b"data: " + orjson.dumps(chunk) + b"\n\n")
        if (body.get("stream_options") or {}).get("include_usage"):
            final = {**envelope, "object": "chat.completion.chunk", "choices": [],
                     "usage": usage}
            await response.write(b"data: " + orjson.dumps(final) + b"\n\n")
        await response.write(b"data: [DONE]\n\n")
        return response

    def _whole(self, body: dict[str, Any], model: str, chat: bool) -> dict[str, Any]:
        n = int(body.get("n") or 1)
        top = body.get("top_logprobs") or 0
        choices = []
        completion_tokens = 0
        for i, (pieces, finish) in enumerate(_pieces(b) for b in _prompts(body) for _ in range(n)):
            text = "".join(pieces)
            completion_tokens += len(pieces)
            logprobs: dict[str, Any] | None = None
            if chat and body.get("logprobs"):
                logprobs = {"content": [_logprob_item(p, j, top) for j, p in enumerate(pieces)]}
            elif not chat and body.get("logprobs") is not None:
                logprobs = {"tokens": pieces, "token_logprobs": [-0.01] * len(pieces),
                            "top_logprobs": [{p: -0.01} for p in pieces],
                            "text_offset": list(range(len(pieces)))}
            choice: dict[str, Any] = {"index": i, "logprobs": logprobs, "finish_reason": finish}
            if chat:
                choice["message"] = {"role": "assistant", "content": text}
            else:
                choice["text"] = text
            choices.append(choice)
        return {
            "id": "fake-1", "object": "chat.completion" if chat else "text_completion",
            "created": int(time.time()), "model": model, "choices": choices,
            "system_fingerprint": f"fp_seed_{body.get('seed')}",
            "usage": {"prompt_tokens": len(_text_of(body).split()),
                      "completion_tokens": completion_tokens,
                      "total_tokens": len(_text_of(body).split()) + completion_tokens},
        }

    async def _stream(self, request: web.Request, body: dict[str, Any], model: str,
                      chat: bool) -> web.StreamResponse:
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        if model == "garbage":
            await response.write(b"data: {broken\n\n")
            return response
        self.open_streams += 1
        try:
            n = int(body.get("n") or 1)
            stall = int(model.split("-")[1]) / 1000 if model.startswith("stall-") else 0.0
            pace = int(model.split("-")[1]) / 1000 if model.startswith("paced-") else 0.0
            completion_tokens = 0
            for position, one in enumerate(_prompts(body)):
                pieces, finish = _pieces(one)
                completion_tokens += len(pieces)
                for i, piece in enumerate(pieces):
                    if pace and i > 0:
                        await asyncio.sleep(pace)
                    if model in ("cut", "stream-error") and i == 3:
                        if model == "cut":
                            request.transport.close()  # type: ignore[union-attr]
                            return response
                        error = {"error": {"message": "fake failure mid-stream", "type": "fake"}}
                        await response.write(b"data: " + orjson.dumps(error) + b"\n\n")
                        return response
                    last = i == len(pieces) - 1
                    delta = {"role": "assistant", "content": piece} if i == 0 else \
                        {"content": piece}
                    choice: dict[str, Any] = {"index": position * n,
                                              "finish_reason": finish if last else None,
                                              "logprobs": None}
                    if chat:
                        choice["delta"] = delta
                        if body.get("logprobs"):
                            top = body.get("top_logprobs") or 0
                            choice["logprobs"] = {"content": [_logprob_item(piece, i, top)]}
                    else:
                        choice["text"] = piece
                    chunk = {"id": "fake-1", "object": "chat.completion.chunk" if chat else
                             "text_completion", "created": 0, "model": model,
                             "choices": [choice]}
                    await response.write(b"data: " + orjson.dumps(chunk) + b"\n\n")
                    if stall and i > 0:
                        await asyncio.sleep(stall)
            if (body.get("stream_options") or {}).get("include_usage"):
                usage = {"prompt_tokens": len(_text_of(body).split()),
                         "completion_tokens": completion_tokens,
                         "total_tokens": len(_text_of(body).split()) + completion_tokens}
                final = {"id": "fake-1", "object": "chat.completion.chunk", "created": 0,
                         "model": model, "choices": [], "usage": usage}
                await response.write(b"data: " + orjson.dumps(final) + b"\n\n")
            await response.write(b"data: [DONE]\n\n")
            return response
        finally:
            self.open_streams -= 1


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9001)
    args = parser.parse_args(argv)
    web.run_app(FakeUpstream().app(), host=args.host, port=args.port, print=None,
                access_log=None)


if __name__ == "__main__":
    main()
