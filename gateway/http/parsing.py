"""Request bodies → typed protocol models, or a 400 that names the offending parameter.

A body is measured before it is parsed (:func:`gateway.http.shape.check_shape`), then validated
in one pass over its bytes, then held to the limits validation does not know (settings)."""

from __future__ import annotations

from typing import Any, Protocol, Self, TypeVar

import orjson
from pydantic import ValidationError

from gateway.http.shape import check_shape
from gateway.kernel.errors import InvalidRequestError
from gateway.protocol import DEFAULT_LIMITS, LimitsSettings


class ParsedRequest(Protocol):
    """A protocol request model (pydantic) that holds itself to the ``[limits]``."""

    @classmethod
    def model_validate_json(cls, json_data: bytes, /) -> Self: ...
    @classmethod
    def model_validate(cls, obj: Any, /) -> Self: ...
    def check_limits(self, limits: LimitsSettings) -> None: ...


M = TypeVar("M", bound=ParsedRequest)

_TYPE_TAGS = {"str", "int", "float", "bool", "list", "dict", "none", "json-or-python"}


def _param(loc: tuple[Any, ...]) -> str | None:
    """A pydantic error location as OpenAI's ``param`` (``messages.0.role``), without the
    union-member tags pydantic inserts (``str``, ``list[int]``, ``function-after[...]``)."""
    parts = [str(p) for p in loc
             if isinstance(p, int) or (str(p) not in _TYPE_TAGS and not any(c in str(p)
                                                                         for c in "[-"))]
    return ".".join(parts) or None


def _describe(errors: list[Any]) -> tuple[str, str | None]:
    param = _param(errors[0].get("loc", ()))
    # A union reports one error per member: say what each would have needed.
    messages = list(dict.fromkeys(str(e.get("msg", "invalid value")) for e in errors
                                  if _param(e.get("loc", ())) == param))
    message = "; or ".join(messages[:3])
    return (f"{param}: {message}" if param else message), param


def parse(model: type[M], body: bytes, limits: LimitsSettings = DEFAULT_LIMITS) -> M:
    """A request body → its typed model within ``limits``, or a 400 that names the offending
    parameter."""
    check_shape(body, limits)
    try:
        parsed = model.model_validate_json(body)  # one pass over the bytes, no dict in between
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False)
        if errors[0]["type"] in ("json_invalid", "model_type"):
            parsed = _parse_slowly(model, body)
        else:
            message, param = _describe(errors)
            raise InvalidRequestError(message, param=param) from exc
    parsed.check_limits(limits)
    return parsed


def _parse_slowly(model: type[M], body: bytes) -> M:
    """The error for a body that is not a JSON object, in words a client understands."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequestError(f"The body is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise InvalidRequestError("The body must be a JSON object.")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        message, param = _describe(exc.errors(include_url=False, include_input=False))
        raise InvalidRequestError(message, param=param) from exc


def json_object(body: bytes, hint: str, param: str | None = None) -> dict[str, Any]:
    """A small admin body that must be a JSON object (``hint`` says what to send)."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequestError(hint, param=param) from exc
    if not isinstance(data, dict):
        raise InvalidRequestError(hint, param=param)
    return data


def query_limit(params: dict[str, str], default: int, most: int) -> int:
    """A ``limit`` query parameter: an integer in ``[1, most]`` (absent: ``default``)."""
    try:
        limit = int(params.get("limit", str(default)))
    except ValueError as exc:
        raise InvalidRequestError("limit must be an integer", param="limit") from exc
    if not 1 <= limit <= most:
        raise InvalidRequestError(f"limit must be in [1, {most}]", param="limit")
    return limit


def query_flag(params: dict[str, str], name: str) -> bool | None:
    """A ``true``/``false`` query parameter (absent: ``None``)."""
    value = params.get(name)
    if value not in (None, "true", "false"):
        raise InvalidRequestError(f"{name} must be true or false", param=name)
    return None if value is None else value == "true"
