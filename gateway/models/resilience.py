"""Per-backend protection: a circuit breaker and a bound on requests in flight.

:class:`GuardedBackend` wraps any :class:`Backend` with both, behind the same interface:

- **in-flight bound**: at most ``max_in_flight`` calls at once; one more is refused at once with
  ``429`` and ``Retry-After`` rather than queued without bound;
- **circuit breaker**: ``breaker_failures`` consecutive failures (the upstream is down, times out or
  answers 5xx/garbage) open the circuit: calls fail fast with ``503`` for ``breaker_reset_s``;
  then one probe call is let through (half-open): success closes the circuit, failure opens it
  again. A client's own error (``4xx``) is not a backend failure.

Retries and fallbacks across backends live in :mod:`gateway.models.dispatch`.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from enum import Enum
from typing import Any

from gateway.kernel.backend import Backend
from gateway.kernel.errors import (
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
from gateway.kernel.modeltuple import ModelTuple

BACKEND_FAILURES = (UpstreamError, ServiceUnavailableError, UpstreamTimeoutError)
"""Errors that say the backend is unwell (as opposed to the request being wrong)."""


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

    async def start(self) -> None:
        await self.inner.start()

    async def aclose(self) -> None:
        await self.inner.aclose()

    def describe(self) -> ModelTuple:
        return self.inner.describe()

    async def health(self) -> dict[str, Any]:
        health = await self.inner.health()
        state = self.breaker.state
        if state is not CircuitState.CLOSED:
            health["status"] = "degraded"
        return {**health, "circuit": state.value, "in_flight": self.in_flight,
                "max_in_flight": self.max_in_flight}

    def _enter(self) -> None:
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
