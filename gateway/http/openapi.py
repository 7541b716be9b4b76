"""The OpenAPI document the gateway serves at ``/openapi.json``, built from the protocol models."""

from __future__ import annotations

from typing import Any

from gateway import __version__
from gateway.protocol import ChatCompletionRequest, CompletionRequest

_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {"error": {
        "type": "object",
        "required": ["message", "type", "param", "code"],
        "properties": {"message": {"type": "string"}, "type": {"type": "string"},
                       "param": {"type": ["string", "null"]}, "code": {"type": ["string", "null"]}},
    }},
}


_ERROR_CONTENT = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}


def _operation(summary: str, schema_ref: str | None) -> dict[str, Any]:
    responses: dict[str, Any] = {
        "200": {"description": "OpenAI-shaped answer (JSON, or SSE when stream is true)"},
        "4XX": {"description": "client error", "content": _ERROR_CONTENT},
        "5XX": {"description": "upstream or gateway error", "content": _ERROR_CONTENT},
    }
    operation: dict[str, Any] = {"summary": summary, "responses": responses}
    if schema_ref is not None:
        operation["requestBody"] = {"required": True, "content": {"application/json": {
            "schema": {"$ref": f"#/components/schemas/{schema_ref}"}}}}
    return operation


def openapi_document() -> dict[str, Any]:
    schemas: dict[str, Any] = {"Error": _ERROR}
    for model in (ChatCompletionRequest, CompletionRequest):
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    return {
        "openapi": "3.1.0",
        "info": {"title": "tiergate", "version": __version__,
                 "description": "OpenAI-compatible inference gateway (see docs/protocol.md)"},
        "paths": {
            "/v1/chat/completions": {"post": _operation("Chat completion",
                                                        "ChatCompletionRequest")},
            "/v1/completions": {"post": _operation("Text completion", "CompletionRequest")},
            "/v1/models": {"get": _operation("Served models and their model tuples", None)},
            "/v1/models/{model}": {"get": {**_operation("One served model", None), "parameters": [
                {"name": "model", "in": "path", "required": True, "schema": {"type": "string"}}]}},
            "/health": {"get": _operation("Liveness and per-model state", None)},
        },
        "components": {"schemas": schemas},
    }
