"""The OpenAPI document the gateway serves at ``/openapi.json``, built from the protocol models.

It states the rules the gateway enforces, so a client or a fuzzer generating requests from it
sends what is accepted: the models' own schema (strict types, ranges), the configured limits
(``[limits]``: model-name length, messages, nesting, objects) and the cross-field rules the
models check in code (``stream_options`` needs ``stream``, ``top_logprobs`` needs ``logprobs``, a
system or user message needs content), written as JSON Schema ``if``/``then``.
"""

from __future__ import annotations

from typing import Any

from gateway import __version__
from gateway.protocol import (
    DEFAULT_LIMITS,
    ChatCompletionRequest,
    CompletionRequest,
    LimitsSettings,
)

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


def _when(field: str, condition: dict[str, Any], then: dict[str, Any]) -> dict[str, Any]:
    """``if`` ``field`` is present and meets ``condition`` ``then`` the object meets ``then``."""
    return {"if": {"required": [field], "properties": {field: condition}}, "then": then}


def _true(field: str) -> dict[str, Any]:
    return {"required": [field], "properties": {field: {"const": True}}}


def _enforced_rules(schemas: dict[str, Any], limits: LimitsSettings) -> None:
    """Add to the models' schemas what validation checks beyond them."""
    for name in ("ChatCompletionRequest", "CompletionRequest"):
        schema = schemas[name]
        schema["properties"]["model"]["maxLength"] = limits.max_model_name_chars
        stop = schema["properties"]["stop"]["anyOf"]
        next(s for s in stop if s.get("type") == "array")["items"]["minLength"] = 1
        schema["allOf"] = [_when("stream_options", {"type": "object"}, _true("stream"))]
    chat = schemas["ChatCompletionRequest"]
    chat["properties"]["messages"]["maxItems"] = limits.max_messages
    chat["allOf"].append(_when("top_logprobs", {"type": "integer", "minimum": 1},
                               _true("logprobs")))
    message = schemas["ChatMessage"]
    content = message["properties"]["content"]["anyOf"]
    part = {"type": "object", "required": ["type"], "properties": {"type": {"type": "string"}},
            "additionalProperties": True}
    next(s for s in content if s.get("type") == "array")["items"] = part
    message["allOf"] = [_when("role", {"enum": ["system", "developer", "user"]}, {
        "required": ["content"], "properties": {"content": {"type": ["string", "array"]}}})]
    _free_form(schemas)


_JSON_VALUE = {
    "if": {"type": "integer"}, "then": {"minimum": -(2**63), "maximum": 2**63 - 1},
    "items": {"$ref": "#/components/schemas/JSONValue"},
    "additionalProperties": {"$ref": "#/components/schemas/JSONValue"},
}
"""Free-form JSON as the gateway accepts it: any value whose integers fit in 64 bits. Written
without ``anyOf`` over types (``items`` and ``additionalProperties`` apply to arrays and objects
only): schema-driven fuzzers then never take a value another branch allows for a violation."""


def _free_form(node: Any) -> None:
    """Every free-form value (unknown fields, tools, content parts, ...) as :data:`_JSON_VALUE`."""
    if isinstance(node, dict):
        if node.get("additionalProperties") is True:
            node["additionalProperties"] = {"$ref": "#/components/schemas/JSONValue"}
        for value in node.values():
            _free_form(value)
    elif isinstance(node, list):
        for value in node:
            _free_form(value)


def _description(limits: LimitsSettings) -> str:
    return (
        "OpenAI-compatible inference gateway (see docs/protocol.md). Every request body is also "
        f"held to: objects and arrays nested at most {limits.max_json_depth} levels deep, at "
        f"most {limits.max_json_containers} of them in a body; every number finite; integers in "
        "free-form fields (unknown fields, tools, content parts) within 64 bits; booleans and "
        "numbers are JSON's own (\"true\" and \"5\" are strings). Violations answer 400.")


def openapi_document(limits: LimitsSettings = DEFAULT_LIMITS) -> dict[str, Any]:
    """The document for a gateway configured with ``limits``."""
    schemas: dict[str, Any] = {"Error": _ERROR, "JSONValue": _JSON_VALUE}
    for model in (ChatCompletionRequest, CompletionRequest):
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    _enforced_rules(schemas, limits)
    model_name = {"type": "string", "minLength": 1, "maxLength": limits.max_model_name_chars}
    return {
        "openapi": "3.1.0",
        "info": {"title": "tiergate", "version": __version__,
                 "description": _description(limits)},
        "paths": {
            "/v1/chat/completions": {"post": _operation("Chat completion",
                                                        "ChatCompletionRequest")},
            "/v1/completions": {"post": _operation("Text completion", "CompletionRequest")},
            "/v1/models": {"get": _operation("Served models and their model tuples", None)},
            "/v1/models/{model}": {"get": {**_operation("One served model", None), "parameters": [
                {"name": "model", "in": "path", "required": True, "schema": model_name}]}},
            "/health": {"get": _operation("Readiness and per-model state (503 when not ready; "
                                          "upstream details with an admin key)", None)},
            "/livez": {"get": _operation("Liveness: the process serves", None)},
            "/readyz": {"get": _operation("Readiness: 503 with reasons when the gateway cannot "
                                          "serve", None)},
        },
        "components": {"schemas": schemas},
    }
