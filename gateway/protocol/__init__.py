"""The OpenAI surface: typed requests (with their own conversion) and response builders.

Requests follow OpenAI's chat and completions APIs plus vLLM's extensions
(:mod:`.requests`: strict types, finite numbers, free-form JSON that can be written back
unchanged); :mod:`.limits` is what one body may hold (the ``[limits]`` section); responses are
built as plain dicts in exactly OpenAI's shape (:mod:`.responses`).
"""

from gateway.protocol.limits import DEFAULT_LIMITS, PARAM_CHARS, LimitsSettings, check_json
from gateway.protocol.requests import (
    ChatCompletionRequest,
    ChatMessage,
    CompletionRequest,
    OpenAIRequest,
    SamplingFields,
    StreamOptions,
)
from gateway.protocol.responses import (
    SSE_DONE,
    ChunkBuilder,
    chat_completion,
    completion,
    model_card,
    sse_event,
)

__all__ = [
    "DEFAULT_LIMITS", "PARAM_CHARS", "SSE_DONE", "ChatCompletionRequest", "ChatMessage",
    "ChunkBuilder", "CompletionRequest", "LimitsSettings", "OpenAIRequest", "SamplingFields",
    "StreamOptions", "chat_completion", "check_json", "completion", "model_card", "sse_event",
]
