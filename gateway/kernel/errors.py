"""The one error hierarchy of tiergate, and the one function that shapes errors for clients.

Every error a client can see is a :class:`TiergateError`. Each subclass fixes its HTTP status and
OpenAI error ``type``; instances add a message and optionally ``param`` and ``code``. Foreign
exceptions (aiohttp, pydantic, torch, sqlite, ...) are mapped at the boundary where they occur with
``raise SomeTiergateError(...) from exc`` so the cause is kept in logs but never sent to a client.

Hierarchy (status, OpenAI ``type``)::

    TiergateError                      500 internal_error
    ├── InvalidRequestError            400 invalid_request_error
    │   ├── RequestTooLargeError       413 invalid_request_error
    │   └── ModelNotFoundError         404 invalid_request_error (code model_not_found)
    ├── NotFoundError                  404 invalid_request_error (unknown path / record)
    ├── MethodNotAllowedError          405 invalid_request_error (+ Allow)
    ├── ConflictError                  409 invalid_request_error (state changed under the request,
    │                                      e.g. a canary set edited since its pin)
    ├── AuthenticationError            401 authentication_error (code invalid_api_key)
    ├── PermissionDeniedError          403 permission_error
    ├── RateLimitError                 429 rate_limit_error (code rate_limit_exceeded;
    │   │                                  + Retry-After)
    │   └── QuotaExceededError         429 insufficient_quota (a key's spend budget is spent;
    │                                      + Retry-After: the budget's period end)
    ├── UpstreamError                  502 upstream_error (the model server failed / spoke nonsense)
    ├── ServiceUnavailableError        503 service_unavailable (+ Retry-After; circuit open)
    │   └── ModelNotValidatedError     503 service_unavailable (code model_not_validated: the
    │                                      tuple did not pass its governance gates)
    ├── UpstreamTimeoutError           504 timeout_error
    └── ModelIntegrityError            500 model_integrity_error (weights do not match the pin)

:func:`error_body` builds ``{"error": {"message", "type", "param", "code"}}`` for JSON responses
and for SSE error events alike.
"""

from __future__ import annotations

from typing import Any, ClassVar


class TiergateError(Exception):
    """Base of every client-visible error. Subclasses set ``status`` and ``error_type``."""

    status: ClassVar[int] = 500
    error_type: ClassVar[str] = "internal_error"
    default_code: ClassVar[str | None] = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code if code is not None else self.default_code
        self.retry_after = retry_after

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.error_type, param=self.param, code=self.code)

    def headers(self) -> dict[str, str]:
        if self.retry_after is None:
            return {}
        return {"retry-after": str(max(1, round(self.retry_after)))}


class InvalidRequestError(TiergateError):
    status = 400
    error_type = "invalid_request_error"


class RequestTooLargeError(InvalidRequestError):
    status = 413
    default_code = "request_too_large"


class ModelNotFoundError(InvalidRequestError):
    status = 404
    default_code = "model_not_found"


class NotFoundError(TiergateError):
    status = 404
    error_type = "invalid_request_error"
    default_code = "not_found"


class MethodNotAllowedError(TiergateError):
    status = 405
    error_type = "invalid_request_error"
    default_code = "method_not_allowed"

    def __init__(self, message: str, *, allow: list[str] | None = None) -> None:
        super().__init__(message)
        self.allow = allow or []

    def headers(self) -> dict[str, str]:
        return {"allow": ", ".join(self.allow)} if self.allow else {}


class ConflictError(TiergateError):
    """The request conflicts with the current state (e.g. a canary set changed since its pin)."""

    status = 409
    error_type = "invalid_request_error"
    default_code = "conflict"


class AuthenticationError(TiergateError):
    status = 401
    error_type = "authentication_error"
    default_code = "invalid_api_key"


class PermissionDeniedError(TiergateError):
    status = 403
    error_type = "permission_error"


class RateLimitError(TiergateError):
    status = 429
    error_type = "rate_limit_error"
    default_code = "rate_limit_exceeded"


class QuotaExceededError(RateLimitError):
    """A key's spend budget for the day or month is spent (OpenAI's ``insufficient_quota``)."""

    error_type = "insufficient_quota"
    default_code = "insufficient_quota"


class UpstreamError(TiergateError):
    """The model server failed, refused, or answered something that is not the OpenAI protocol."""

    status = 502
    error_type = "upstream_error"
    default_code = "bad_gateway"


class ServiceUnavailableError(TiergateError):
    status = 503
    error_type = "service_unavailable"
    default_code = "service_unavailable"


class ModelNotValidatedError(ServiceUnavailableError):
    """The model's tuple did not pass its gates (:mod:`gateway.governance`): it does not serve
    until a start where it does (or an operator's ``gate_override``)."""

    default_code = "model_not_validated"


class UpstreamTimeoutError(TiergateError):
    status = 504
    error_type = "timeout_error"
    default_code = "upstream_timeout"


class ModelIntegrityError(TiergateError):
    """Weights on disk (or an upstream's identity) do not match the pinned model tuple."""

    status = 500
    error_type = "model_integrity_error"
    default_code = "model_digest_mismatch"


class ConfigError(Exception):
    """Settings are invalid. Raised at start-up, never sent to a client."""


class UnsafePathError(ConfigError):
    """A file or directory tiergate would trust belongs to another user, or others can write to
    it (:func:`gateway.kernel.files.check_private_dir`). Never sent to a client."""


def error_body(
    message: str, error_type: str, *, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """The OpenAI error object. Used for JSON error responses and SSE error events."""
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


def internal_error() -> TiergateError:
    """What a client sees for a bug: no traceback, no internals; the request id finds the log."""
    return TiergateError("The gateway failed to process the request; see its logs.")
