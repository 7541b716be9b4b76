"""Per-backend protection: a circuit breaker and a bound on requests in flight.

:class:`GuardedBackend` wraps any :class:`Backend` with both, behind the same interface:

- **in-flight bound**: at most ``max_in_flight`` calls at once; one more is refused at once with
  ``429`` and ``Retry-After`` rather than queued without bound;
- **circuit breaker**: ``breaker_failures`` consecutive failures (the upstream is down, times out or
  answers 5xx/garbage) open the circuit: calls fail fast with ``503`` for ``breaker_reset_s``;
  then one probe call is let through (half-open): success closes the circuit, failure opens it
  again. A client's own error (``4xx``) is not a backend failure;
- **loading**: while the registry loads the model in the background (:meth:`ModelRegistry.load`)
  a call is refused at once with ``503`` ``model_loading`` and ``Retry-After``; a model that
  failed to load, with ``503`` ``model_failed``. Neither is a call, nor a breaker failure.

Retries and fallbacks across backends live in :mod:`gateway.models.dispatch`.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from enum import Enum
from typing import Any, TypeVar

from gateway.kernel.backend import Backend
from gateway.kernel.errors import (
    ModelNotValidatedError,
    RateLimitError,
    ServiceUnavailableError,
    UpstreamError,
    UpstreamTimeoutError,
)
from gateway.kernel.generation import (
    EmbeddingRequest,
    EmbeddingResult,
    GenerationChunk,
    GenerationRequest,
    GenerationResult,
)
from gateway.kernel.modeltuple import EvalRef, ModelTuple

T = TypeVar("T")

BACKEND_FAILURES = (UpstreamError, ServiceUnavailableError, UpstreamTimeoutError)
"""Errors that say the backend is unwell (as opposed to the request being wrong)."""

NOT_LOADED = frozenset({"circuit_open", "model_loading", "model_failed", "model_not_validated"})
"""Codes of the 503s refused before any call (retrying the same model at once is pointless)."""

LOADING_RETRY_AFTER_S = 10.0
"""``Retry-After`` of a call to a model that is loading (a load takes seconds to minutes)."""


class CircuitState(Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    def __init__(self, failures: int, reset_s: float) -> None:
        self.threshold = failures
        self.reset_s = reset_s
        self.consecutive_failures = 0
        self.opened_at: float | None = None
        self.probing = False
        self.opened_count = 0

    @property
    def state(self) -> CircuitState:
        if self.opened_at is None:
            return CircuitState.CLOSED
        if time.monotonic() - self.opened_at >= self.reset_s:
            return CircuitState.HALF_OPEN
        return CircuitState.OPEN

    def before_call(self, name: str) -> None:
        """Raise at once while open; while half-open, let exactly one probe through."""
        state = self.state
        if state is CircuitState.CLOSED:
            return
        if state is CircuitState.HALF_OPEN and not self.probing:
            self.probing = True
            return
        assert self.opened_at is not None
        remaining = max(0.0, self.reset_s - (time.monotonic() - self.opened_at))
        raise ServiceUnavailableError(
            f"model {name} is failing; its circuit breaker is open", code="circuit_open",
            retry_after=max(1.0, remaining))

    def record_success(self) -> None:
        self.consecutive_failures = 0
        self.opened_at = None
        self.probing = False

    def record_failure(self) -> None:
        self.consecutive_failures += 1
        if self.probing or self.consecutive_failures >= self.threshold:
            if self.opened_at is None or self.probing:
                self.opened_count += 1
            self.opened_at = time.monotonic()
        self.probing = False

    def release_probe(self) -> None:
        """A probe that ended without a verdict (client error, cancellation) frees the slot."""
        self.probing = False


class GuardedBackend(Backend):
    """``inner`` behind a circuit breaker and an in-flight bound (see the module doc)."""

    def __init__(self, inner: Backend, max_in_flight: int, breaker_failures: int,
                 breaker_reset_s: float) -> None:
        super().__init__(inner.name)
        self.inner = inner
        self.max_in_flight = max_in_flight
        self.in_flight = 0
        self.breaker = CircuitBreaker(breaker_failures, breaker_reset_s)
        self.loading: str | None = None
        """What loading the model is doing now (``None``: not loading in the background)."""
        self.load_error: str | None = None
        """Why loading it in the background failed (for the log and admins)."""
        self.started = False
        self.refusal: str | None = None
        """Why this model does not serve (its tuple failed its gates), or ``None``."""
        self.validating_eval: EvalRef | None = None
        """The eval its gates accepted (:mod:`gateway.governance`), shown in its tuple."""
        self._described: tuple[ModelTuple, EvalRef | None, ModelTuple] | None = None

    async def start(self) -> None:
        await self.inner.start()
        self.started = True

    async def aclose(self) -> None:
        self.started = False
        await self.inner.aclose()

    @property
    def load_status(self) -> str:
        """``loading``, ``failed`` (to load), ``ready`` or ``not loaded``."""
        if self.loading is not None:
            return "loading"
        if self.load_error is not None:
            return "failed"
        return "ready" if self.started else "not loaded"

    def describe(self) -> ModelTuple:
        """The backend's tuple, with the validating eval the registry attached."""
        inner = self.inner.describe()
        evaluation = self.validating_eval
        if evaluation is None:
            return inner
        cached = self._described
        if cached is None or cached[0] is not inner or cached[1] is not evaluation:
            cached = self._described = (inner, evaluation, inner.model_copy(
                update={"validating_eval": evaluation}))
        return cached[2]

    def batching(self) -> dict[str, Any] | None:
        return self.inner.batching()

    async def health(self) -> dict[str, Any]:
        if self.loading is not None:
            health: dict[str, Any] = {"status": "loading", "step": self.loading}
        elif self.load_error is not None:
            health = {"status": "failed", "error": self.load_error}
        else:
            health = await self.inner.health()
        state = self.breaker.state
        if state is not CircuitState.CLOSED:
            health["status"] = "degraded"
        if self.refusal is not None:
            health["status"], health["refusal"] = "refused", self.refusal
        return {**health, "circuit": state.value, "in_flight": self.in_flight,
                "max_in_flight": self.max_in_flight}

    def _enter(self) -> None:
        if self.loading is not None:
            raise ServiceUnavailableError(
                f"model {self.name} is loading ({self.loading}); try again shortly",
                code="model_loading", retry_after=LOADING_RETRY_AFTER_S)
        if self.load_error is not None:
            raise ServiceUnavailableError(
                f"model {self.name} failed to load; the gateway's log says why",
                code="model_failed")
        if self.refusal is not None:
            raise ModelNotValidatedError(self.refusal)
        if self.in_flight >= self.max_in_flight:
            raise RateLimitError(
                f"model {self.name} is at its limit of {self.max_in_flight} requests in flight",
                code="overloaded", retry_after=1)
        self.breaker.before_call(self.name)
        self.in_flight += 1

    def _exit(self, error: BaseException | None) -> None:
        self.in_flight -= 1
        if error is None:
            self.breaker.record_success()
        elif isinstance(error, BACKEND_FAILURES):
            self.breaker.record_failure()
        else:
            self.breaker.release_probe()

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        self._enter()
        try:
            result = await self.inner.generate(request)
        except BaseException as exc:
            self._exit(exc)
            raise
        self._exit(None)
        return result

    async def embed(self, request: EmbeddingRequest) -> EmbeddingResult:
        self._enter()
        try:
            result = await self.inner.embed(request)
        except BaseException as exc:
            self._exit(exc)
            raise
        self._exit(None)
        return result

    async def call(self, run: Callable[[Backend], Awaitable[T]]) -> T:
        """``run`` on the inner backend, guarded as ``generate`` is (a call of another kind: a
        forwarded ``/v1/responses``)."""
        self._enter()
        try:
            result = await run(self.inner)
        except BaseException as exc:
            self._exit(exc)
            raise
        self._exit(None)
        return result

    async def call_stream(self, run: Callable[[Backend], AsyncIterator[T]]) -> AsyncIterator[T]:
        """``run``'s stream from the inner backend, guarded as ``stream`` is."""
        self._enter()
        error: BaseException | None = None
        try:
            async for item in run(self.inner):
                yield item
        except BaseException as exc:
            error = exc
            raise
        finally:
            self._exit(error)

    async def stream(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        self._enter()
        error: BaseException | None = None
        try:
            async for chunk in self.inner.stream(request):
                yield chunk
        except BaseException as exc:
            error = exc
            raise
        finally:
            # A stream its client abandoned (GeneratorExit) is no verdict on the backend:
            # _exit counts only backend failures.
            self._exit(error)
