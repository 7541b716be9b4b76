"""The OpenAI surface: typed requests (with their own conversion) and response builders.

Requests follow OpenAI's chat and completions APIs plus vLLM's extensions
(:mod:`.requests`: strict types, finite numbers, free-form JSON that can be written back
unchanged); :mod:`.limits` is what one body may hold (the ``[limits]`` section); responses are
built as plain dicts in exactly OpenAI's shape (:mod:`.responses`). The Responses API
(``/v1/responses``) has its own module (:mod:`.responses_api`): its request translated to chat,
its ``response`` object and stream events; the embeddings API has :mod:`.embeddings`.
"""

from gateway.protocol.embeddings import EmbeddingsRequest, embedding_list
from gateway.protocol.limits import DEFAULT_LIMITS, PARAM_CHARS, LimitsSettings, check_json
from gateway.protocol.requests import (
    ChatCompletionRequest,
    ChatMessage,
    CompletionRequest,
    SamplingFields,
    StreamOptions,
)
from gateway.protocol.responses import (
    SSE_DONE,
    ChunkBuilder,
    StreamShape,
    chat_completion,
    completion,
    model_card,
    sse_event,
)
from gateway.protocol.responses_api import (
    ResponsesRequest,
    ResponseStream,
    response_object,
    responses_param,
)

OpenAIRequest = ChatCompletionRequest | CompletionRequest | ResponsesRequest
"""A request of any of the generating surfaces."""

__all__ = [
    "DEFAULT_LIMITS", "PARAM_CHARS", "SSE_DONE", "ChatCompletionRequest", "ChatMessage",
    "ChunkBuilder", "CompletionRequest", "EmbeddingsRequest", "LimitsSettings", "OpenAIRequest",
    "ResponseStream", "ResponsesRequest", "SamplingFields", "StreamOptions", "StreamShape",
    "chat_completion", "check_json", "completion", "embedding_list", "model_card",
    "response_object", "responses_param", "sse_event",
]
