"""Metrics and traces: OpenTelemetry SDK, metrics exposed as Prometheus text at ``/metrics``.

Each app owns its providers (no global OpenTelemetry state is set), so several gateways can live
in one process. Traces: one server span per request, child spans for routing, the verifier and
each backend call; the W3C ``traceparent`` of the current span is sent to HTTP upstreams; spans
go to an OTLP/HTTP collector when ``telemetry.otlp_endpoint`` is set.

Metric names (Prometheus): ``tiergate_requests_total``, ``tiergate_request_duration_seconds``,
``tiergate_time_to_first_token_seconds``, ``tiergate_tokens_total``,
``tiergate_escalations_total``, ``tiergate_in_flight``, ``tiergate_circuit_state``,
``tiergate_record_queue_depth`` (labels and meanings in docs/operations.md).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from gateway.settings import TelemetrySettings

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                   10.0, 30.0, 60.0, 120.0)
CIRCUIT_VALUES = {"closed": 0, "half_open": 1, "open": 2}

Gauges = Callable[[], dict[str, float]]


class Telemetry:
    def __init__(self, settings: TelemetrySettings) -> None:
        self.settings = settings
        self._gauges: dict[str, Gauges] = {}
        self._registry: Any = None
        self._tracer: Any = None
        self._meter_provider: Any = None
        self._tracer_provider: Any = None
        if settings.metrics:
            self._setup_metrics()
        if settings.tracing:
            self._setup_tracing()

    # -- set-up ------------------------------------------------------------------------------

    def _setup_metrics(self) -> None:
        from opentelemetry.exporter.prometheus import PrometheusMetricReader
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View
        from opentelemetry.sdk.resources import Resource
        from prometheus_client import CollectorRegistry

        self._registry = CollectorRegistry(auto_describe=True)
        reader = PrometheusMetricReader(disable_target_info=True, scope_info_enabled=False,
                                        registry=self._registry)
        self._meter_provider = MeterProvider(
            metric_readers=[reader],
            resource=Resource.create({"service.name": self.settings.service_name}),
            views=[View(instrument_name="*duration*",
                        aggregation=ExplicitBucketHistogramAggregation(LATENCY_BUCKETS)),
                   View(instrument_name="*first_token*",
                        aggregation=ExplicitBucketHistogramAggregation(LATENCY_BUCKETS))],
        )
        meter = self._meter_provider.get_meter("tiergate")
        self.requests = meter.create_counter(
            "tiergate_requests", description="Requests answered, by route, model and status")
        self.duration = meter.create_histogram(
            "tiergate_request_duration", unit="s",
            description="Whole request latency (a stream: until its last byte)")
        self.ttft = meter.create_histogram(
            "tiergate_time_to_first_token", unit="s",
            description="Time to the first token of an answer")
        self.tokens = meter.create_counter(
            "tiergate_tokens", description="Tokens in (prompt) and out (completion), by model")
        self.escalations = meter.create_counter(
            "tiergate_escalations", description="Requests a route sent to its large model")
        for name, description in (
            ("tiergate_in_flight", "Requests in flight, by model"),
            ("tiergate_circuit_state", "Circuit breaker: 0 closed, 1 half-open, 2 open"),
            ("tiergate_record_queue_depth", "Decode records waiting for the sink"),
        ):
            meter.create_observable_gauge(name, callbacks=[self._observer(name)],
                                          description=description)

    def _observer(self, name: str) -> Callable[[Any], Iterator[Any]]:
        from opentelemetry.metrics import Observation

        def observe(options: Any) -> Iterator[Any]:
            source = self._gauges.get(name)
            if source is None:
                return
            for label, value in source().items():
                yield Observation(value, {"model": label} if label else {})

        return observe

    def _setup_tracing(self) -> None:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider

        self._tracer_provider = TracerProvider(
            resource=Resource.create({"service.name": self.settings.service_name}))
        if self.settings.otlp_endpoint:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            from opentelemetry.sdk.trace.export import BatchSpanProcessor

            exporter = OTLPSpanExporter(
                endpoint=self.settings.otlp_endpoint.rstrip("/") + "/v1/traces")
            self._tracer_provider.add_span_processor(BatchSpanProcessor(exporter))
        self._tracer = self._tracer_provider.get_tracer("tiergate")

    def shutdown(self) -> None:
        if self._tracer_provider is not None:
            self._tracer_provider.shutdown()
        if self._meter_provider is not None:
            self._meter_provider.shutdown()

    # -- use ---------------------------------------------------------------------------------

    def gauge(self, name: str, source: Gauges) -> None:
        """Report ``source()`` (label → value) as the observable gauge ``name``."""
        self._gauges[name] = source

    def observe_request(self, route: str, model: str, status: int, duration_s: float,
                        ttft_s: float | None, prompt_tokens: int,
                        completion_tokens: int) -> None:
        if self._registry is None:
            return
        labels = {"route": route, "model": model, "status": str(status)}
        self.requests.add(1, labels)
        self.duration.record(duration_s, labels)
        if ttft_s is not None:
            self.ttft.record(ttft_s, {"route": route, "model": model})
        if prompt_tokens:
            self.tokens.add(prompt_tokens, {"model": model, "direction": "in"})
        if completion_tokens:
            self.tokens.add(completion_tokens, {"model": model, "direction": "out"})

    def prometheus_text(self) -> bytes:
        if self._registry is None:
            return b""
        from prometheus_client import generate_latest

        text: bytes = generate_latest(self._registry)
        return text

    def span(self, name: str, **attributes: Any) -> AbstractContextManager[Any]:
        """A span (child of the current one), or nothing when tracing is off."""
        if self._tracer is None:
            return nullcontext()
        span: AbstractContextManager[Any] = self._tracer.start_as_current_span(
            name, attributes=attributes)
        return span

    def start_request_span(self, name: str, trace_headers: dict[str, str], request_id: str,
                           model: str) -> Any:
        """The request's server span (not yet current; see :meth:`use`), continuing the trace
        whose ``traceparent`` the client sent. ``None`` when tracing is off."""
        if self._tracer is None:
            return None
        from opentelemetry.propagate import extract
        from opentelemetry.trace import SpanKind

        context = extract(trace_headers) if trace_headers else None
        return self._tracer.start_span(
            name, context=context, kind=SpanKind.SERVER,
            attributes={"tiergate.request_id": request_id, "tiergate.route": model})

    def use(self, span: Any) -> AbstractContextManager[Any]:
        """Make ``span`` current for the calls inside (their spans become its children)."""
        if span is None:
            return nullcontext()
        from opentelemetry.trace import use_span

        return use_span(span, end_on_exit=False)

    def end_span(self, span: Any, status: int, error: BaseException | None) -> None:
        if span is None:
            return
        from opentelemetry.trace import Status, StatusCode

        span.set_attribute("http.response.status_code", status)
        if status >= 500 or (error is not None and status != 499 and status >= 400):
            span.set_status(Status(StatusCode.ERROR, str(error) if error else None))
        span.end()


def inject_traceparent(headers: dict[str, str]) -> None:
    """Add the current span's W3C ``traceparent`` (and ``tracestate``) to upstream headers."""
    from opentelemetry.propagate import inject

    inject(headers)
