"""The serving object: request preparers run while the model works, never on the answer's path."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from gateway import protocol
from gateway.http.state import GatewayState
from gateway.kernel.generation import GenerationRequest, GenerationResult
from gateway.listener import CompletedRequest, RequestContext, RequestListener
from gateway.settings import Settings
from tests.conftest import ServerProcess, upstream_model


@pytest.fixture
async def state(upstream: ServerProcess) -> AsyncIterator[GatewayState]:
    settings = Settings(models={"echo": upstream_model(upstream, "echo"),
                                "paced": upstream_model(upstream, "paced-10")},
                        records={"sink": "none"})
    state = GatewayState.build(settings)
    await state.registry.start()
    yield state
    await state.registry.aclose()


def chat(model: str, stream: bool) -> protocol.ChatCompletionRequest:
    return protocol.ChatCompletionRequest.model_validate(
        {"model": model, "stream": stream, "messages": [{"role": "user", "content": "hi"}]})


class Events(RequestListener):
    """A listener that notes when each hook ran."""

    def __init__(self, events: list[str], broken: bool = False) -> None:
        self.events = events
        self.broken = broken
        self.prepared: list[Any] = []
        self.completions: list[CompletedRequest] = []

    def started(self, ctx: RequestContext, client_request: protocol.OpenAIRequest,
                request: GenerationRequest) -> None:
        if self.broken:
            raise RuntimeError("a bug")
        self.events.append("prepared")
        self.prepared.append((ctx, client_request, request))

    def completed(self, done: CompletedRequest) -> None:
        self.events.append("completed")
        self.completions.append(done)


async def test_a_preparer_runs_while_the_model_call_waits(state: GatewayState) -> None:
    serving = state.serving
    events: list[str] = []
    generate = serving.dispatcher.generate

    async def timed_generate(model: str, request: GenerationRequest) -> GenerationResult:
        events.append("call sent")
        result = await generate(model, request)
        events.append("answer back")
        return result

    serving.dispatcher.generate = timed_generate  # type: ignore[method-assign]
    listener = Events(events)
    serving.add_listener(listener)
    prepared = listener.prepared
    ctx = RequestContext(request_id="r1")
    served = await serving.create(chat("echo", stream=False), ctx)
    assert served.body is not None
    assert events == ["call sent", "prepared", "answer back", "completed"]
    assert prepared[0][0] is ctx and prepared[0][2].request_id == "r1"


async def test_a_stream_prepares_after_its_first_bytes_and_before_the_end(
        state: GatewayState) -> None:
    serving = state.serving
    events: list[str] = []
    serving.add_listener(Events(events))
    served = await serving.create(chat("paced", stream=True), RequestContext(request_id="r2"))
    assert served.stream is not None
    async for piece in served.stream:
        events.append("done" if piece.endswith(b"data: [DONE]\n\n") else "chunk")
    assert events[0] == "chunk" and events[1] == "prepared"
    assert events[-2:] == ["completed", "done"] and events.count("prepared") == 1


async def test_a_failing_preparer_does_not_fail_the_request(
        state: GatewayState, caplog: pytest.LogCaptureFixture) -> None:
    serving = state.serving
    listener = Events([], broken=True)
    serving.add_listener(listener)
    completed = listener.completions
    served = await serving.create(chat("echo", stream=False), RequestContext(request_id="r3"))
    assert served.body is not None and completed[0].ctx.request_id == "r3"
    # it ran, and was logged
    assert "request r3: listener listener failed to prepare" in caplog.text
