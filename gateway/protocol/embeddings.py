"""OpenAI's embeddings API (``/v1/embeddings``): the request, typed, and the list of
embeddings in the encoding the client asked for (``float``, or ``base64``: little-endian
float32, as OpenAI sends it)."""

from __future__ import annotations

import base64
import struct
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from gateway.kernel.errors import InvalidRequestError
from gateway.kernel.generation import EmbeddingRequest, EmbeddingResult
from gateway.protocol.limits import LimitsSettings, check_json
from gateway.protocol.requests import TokenIds

MAX_INPUTS = 2048
"""Inputs in one request, at most (OpenAI's bound)."""

Text = Annotated[str, Field(min_length=1)]
Tokens = Annotated[TokenIds, Field(min_length=1)]


class EmbeddingsRequest(BaseModel):
    """``POST /v1/embeddings``. Unknown fields are kept and passed on."""

    model_config = ConfigDict(extra="allow", strict=True, allow_inf_nan=False)

    model: str = Field(min_length=1)
    input: (Text | Tokens | Annotated[list[Text], Field(min_length=1, max_length=MAX_INPUTS)]
            | Annotated[list[Tokens], Field(min_length=1, max_length=MAX_INPUTS)])
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: Annotated[int, Field(ge=1, le=2**31 - 1)] | None = None
    user: str | None = None

    def check_limits(self, limits: LimitsSettings) -> None:
        if len(self.model) > limits.max_model_name_chars:
            raise InvalidRequestError(f"model: names are at most {limits.max_model_name_chars} "
                                      f"characters, not {len(self.model)}", param="model")
        if self.model_extra:
            check_json(dict(self.model_extra))

    def batch(self) -> list[str] | list[list[int]]:
        value = self.input
        if isinstance(value, str):
            return [value]
        if value and isinstance(value[0], int):
            return [value]
        return value  # type: ignore[return-value]

    def to_embedding_request(self, request_id: str) -> EmbeddingRequest:
        passthrough = dict(self.model_extra or {})
        for name in ("encoding_format", "dimensions", "user"):
            if name in self.model_fields_set:
                passthrough[name] = getattr(self, name)
        return EmbeddingRequest(request_id=request_id, input=self.batch(),
                                passthrough=passthrough)


def _encoded(vector: list[float] | str, encoding: str) -> list[float] | str:
    if encoding == "base64":
        if isinstance(vector, str):
            return vector
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
    if isinstance(vector, str):
        raw = base64.b64decode(vector)
        return list(struct.unpack(f"<{len(raw) // 4}f", raw))
    return vector


def embedding_list(result: EmbeddingResult, model_name: str,
                   encoding: str | None) -> dict[str, Any]:
    """OpenAI's ``list`` of ``embedding`` objects, each in ``encoding`` (default ``float``)."""
    return {
        **result.extra,
        "object": "list",
        "data": [{"object": "embedding", "index": index,
                  "embedding": _encoded(vector, encoding or "float")}
                 for index, vector in enumerate(result.embeddings)],
        "model": model_name,
        "usage": {"prompt_tokens": result.usage.prompt_tokens,
                  "total_tokens": result.usage.prompt_tokens},
    }
