"""The serving object: request preparers run while the model works, never on the answer's path."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from gateway import protocol
from gateway.backends.base import GenerationRequest, GenerationResult
from gateway.serving import CompletedRequest, RequestContext
from gateway.settings import Settings
from gateway.state import GatewayState
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
    prepared: list[Any] = []
    serving.preparers.append(lambda ctx, req, gen: (events.append("prepared"),
                                                    prepared.append((ctx, req, gen))))
    serving.listeners.append(lambda done: events.append("completed"))
    ctx = RequestContext(request_id="r1")
    served = await serving.create(chat("echo", stream=False), ctx)
    assert served.body is not None
    assert events == ["call sent", "prepared", "answer back", "completed"]
    assert prepared[0][0] is ctx and prepared[0][2].request_id == "r1"


async def test_a_stream_prepares_after_its_first_bytes_and_before_the_end(
        state: GatewayState) -> None:
    serving = state.serving
    events: list[str] = []
    serving.preparers.append(lambda ctx, req, gen: events.append("prepared"))
    serving.listeners.append(lambda done: events.append("completed"))
    served = await serving.create(chat("paced", stream=True), RequestContext(request_id="r2"))
    assert served.stream is not None
    async for piece in served.stream:
        events.append("done" if piece.endswith(b"data: [DONE]\n\n") else "chunk")
    assert events[0] == "chunk" and events[1] == "prepared"
    assert events[-2:] == ["completed", "done"] and events.count("prepared") == 1


async def test_a_failing_preparer_does_not_fail_the_request(
        state: GatewayState, caplog: pytest.LogCaptureFixture) -> None:
    serving = state.serving
    completed: list[CompletedRequest] = []

    def broken(ctx: RequestContext, req: protocol.OpenAIRequest,
               gen: GenerationRequest) -> None:
        raise RuntimeError("a bug")

    serving.preparers.append(broken)
    serving.listeners.append(completed.append)
    served = await serving.create(chat("echo", stream=False), RequestContext(request_id="r3"))
    assert served.body is not None and completed[0].ctx.request_id == "r3"
    assert "request r3: request preparer failed" in caplog.text  # it ran, and was logged
