"""The ``[telemetry]`` settings section: metrics and traces."""

from __future__ import annotations

from pydantic import Field

from gateway.kernel.settings import Section


class TelemetrySettings(Section):
    metrics: bool = True
    """Request metrics, exposed as Prometheus text at ``/metrics``."""
    tracing: bool = True
    """A span per request with child spans per backend call; ``traceparent`` sent upstream."""
    trace_sample_ratio: float = Field(default=0.05, ge=0.0, le=1.0)
    """Share of requests traced when the client sent no ``traceparent`` (a sampled client
    trace is always continued)."""
    otlp_endpoint: str | None = None
    """OTLP/HTTP collector root (e.g. ``http://otel-collector:4318``) to export spans to."""
    service_name: str = "tiergate"
    """``service.name`` of the exported telemetry."""
