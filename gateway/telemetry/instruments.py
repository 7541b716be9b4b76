"""Metrics and traces.

Metrics: :mod:`gateway.telemetry.metrics` instruments (about a microsecond per request; see there
why not OpenTelemetry's metric SDK), Prometheus text at ``/metrics``. Traces: the OpenTelemetry SDK
— a server span per sampled request, a child span per backend attempt, the W3C ``traceparent`` sent
to HTTP upstreams, OTLP/HTTP export when ``telemetry.otlp_endpoint`` is set. Sampling is
parent-based: a client's sampled ``traceparent`` is always traced (and continued); otherwise a
``trace_sample_ratio`` share of requests is. An unsampled request creates no span at all, and a
client's unsampled ``traceparent`` is passed upstream unchanged. Each app owns its providers and
registry: no global state, several gateways can live in one process.

Bounded: a label value or span attribute that a client's input names (the requested model) is
one of the configured ``names`` (models and routes) or :data:`UNKNOWN` — a client sending 50,000
made-up model names adds one series, not 50,000 — and text a client or upstream controls is
clipped (:func:`clip`) before it reaches a span or a log line.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, nullcontext
from contextvars import ContextVar
from typing import Any

from gateway.telemetry.metrics import Counter, Gauge, Histogram, MetricsRegistry
from gateway.telemetry.settings import TelemetrySettings

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                   10.0, 30.0, 60.0, 120.0)
CIRCUIT_VALUES = {"closed": 0, "half_open": 1, "open": 2}
UNKNOWN = "unknown"
"""The one label value of every model or route name that is not configured."""
CLIP_CHARS = 200
"""The most characters of client- or upstream-controlled text in a span status or log line."""

Gauges = Callable[[], dict[str, float]]


def clip(text: str, limit: int = CLIP_CHARS) -> str:
    """``text`` cut to ``limit`` characters (and marked so) for a log line or span."""
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} characters)"


class Telemetry:
    def __init__(self, settings: TelemetrySettings, names: Iterable[str] = ()) -> None:
        self.settings = settings
        self.names = frozenset(names)
        """The configured model and route names: the only values a request's ``route`` or
        ``model`` label takes besides :data:`UNKNOWN`."""
        self.registry = MetricsRegistry()
        self.requests = Counter("tiergate_requests_total",
                                "Requests answered, by route, model and status",
                                ("route", "model", "status"))
        self.duration = Histogram("tiergate_request_duration_seconds",
                                  "Whole request latency (a stream: until its last byte)",
                                  ("route", "model", "status"), LATENCY_BUCKETS)
        self.ttft = Histogram("tiergate_time_to_first_token_seconds",
                              "Time from request arrival to the first token",
                              ("route", "model"), LATENCY_BUCKETS)
        self.tokens = Counter("tiergate_tokens_total",
                              "Tokens in (prompt) and out (completion), by model",
                              ("model", "direction"))
        self.cost = Counter("tiergate_cost_usd_total",
                            "What model calls cost in USD (docs/cost.md), by route, model and "
                            "caller key id (\"none\" on an open gateway)",
                            ("route", "model", "key"))
        self.key_refusals = Counter("tiergate_key_refusals_total",
                                    "Requests a client key's policy refused, by key id and "
                                    "code (rate_limit_exceeded, insufficient_quota, "
                                    "model_not_allowed, route_not_allowed, limits_unavailable)",
                                    ("key", "code"))
        self.escalations = Counter("tiergate_escalations_total",
                                   "Requests a route sent to its large model", ("route",))
        self.shadow = Counter("tiergate_shadow_total",
                              "Mirrored requests by live model, shadow target and outcome "
                              "(identical, diverged, error, busy, dropped)",
                              ("model", "target", "outcome"))
        self.canary_alerts = Counter("tiergate_canary_alerts_total",
                                     "Canary alerts by model, kind (drift, acknowledged, stale) "
                                     "and source (canary, shadow, tuple, operator, registry)",
                                     ("model", "kind", "source"))
        self.gauges = {
            "tiergate_canary_rollback": Gauge("tiergate_canary_rollback",
                                              "1 while a model's traffic is rolled back to its "
                                              "pinned version", "model"),
            "tiergate_canary_leader": Gauge("tiergate_canary_leader",
                                            "1 on the replica that runs scheduled canaries",
                                            None),
            "tiergate_in_flight": Gauge("tiergate_in_flight", "Requests in flight, by model",
                                        "model"),
            "tiergate_circuit_state": Gauge("tiergate_circuit_state",
                                            "Circuit breaker: 0 closed, 1 half-open, 2 open",
                                            "model"),
            "tiergate_shadow_queue_depth": Gauge("tiergate_shadow_queue_depth",
                                                 "Mirrored requests waiting for a shadow call",
                                                 None),
            "tiergate_record_queue_depth": Gauge("tiergate_record_queue_depth",
                                                 "Decode records waiting for the sink", None),
            "tiergate_tuple_gate_status": Gauge("tiergate_tuple_gate_status",
                                                "A model's gates: 0 gated, 1 overridden, "
                                                "2 served with a warning, 3 refused", "model"),
            "tiergate_tuple_stale": Gauge("tiergate_tuple_stale",
                                          "1 while a model's last evaluation is older than its "
                                          "re-evaluation period", "model"),
            "tiergate_governance_coverage": Gauge("tiergate_governance_coverage",
                                                  "Shares: served tuples gated with a current "
                                                  "eval (tuples), requests they answered "
                                                  "(traffic), tuples with an owner (owners)",
                                                  "of"),
            "tiergate_route_escalation_share": Gauge(
                "tiergate_route_escalation_share",
                "Share of a route's decisions escalated since its last drift alarm", "route"),
            "tiergate_route_escalation_expected": Gauge(
                "tiergate_route_escalation_expected",
                "The escalation share a route's threshold was calibrated for", "route"),
            "tiergate_route_drift_evidence": Gauge(
                "tiergate_route_drift_evidence",
                "Escalation drift evidence of a route: largest test statistic / alarm level "
                "(1 alarms)", "route"),
        }
        metrics: list[Counter | Histogram | Gauge] = [
            self.requests, self.duration, self.ttft, self.tokens, self.cost, self.key_refusals,
            self.escalations, self.shadow,
            self.canary_alerts,
            *self.gauges.values()]
        for metric in metrics:
            self.registry.add(metric)
        self._tracer: Any = None
        self._tracer_provider: Any = None
        if settings.tracing:
            self._setup_tracing()

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

    # -- metrics -----------------------------------------------------------------------------

    def label(self, name: str) -> str:
        """A model or route name as a label value: itself if configured, else ``unknown``."""
        return name if name in self.names else UNKNOWN

    def gauge(self, name: str, source: Gauges) -> None:
        """Report ``source()`` (label value → number) as the gauge ``name`` when scraped."""
        self.gauges[name].source = source

    def observe_request(self, route: str, model: str, status: int, duration_s: float,
                        ttft_s: float | None, prompt_tokens: int,
                        completion_tokens: int) -> None:
        if not self.settings.metrics:
            return
        names = self.names  # self.label, inline: once per request
        route = route if route in names else UNKNOWN
        model = model if model in names else UNKNOWN
        labels = (route, model, str(status))
        self.requests.inc(labels)
        self.duration.observe(labels, duration_s)
        if ttft_s is not None:
            self.ttft.observe((route, model), ttft_s)
        if prompt_tokens:  # self._count_tokens, inline
            self.tokens.inc((model, "in"), prompt_tokens)
        if completion_tokens:
            self.tokens.inc((model, "out"), completion_tokens)

    def count_tokens(self, model: str, prompt_tokens: int, completion_tokens: int) -> None:
        """Tokens of a model call that did not answer the request (a cascade's rejected small
        answer): the request's own are counted by :meth:`observe_request`."""
        if self.settings.metrics:
            self._count_tokens(self.label(model), prompt_tokens, completion_tokens)

    def _count_tokens(self, model: str, prompt_tokens: int, completion_tokens: int) -> None:
        if prompt_tokens:
            self.tokens.inc((model, "in"), prompt_tokens)
        if completion_tokens:
            self.tokens.inc((model, "out"), completion_tokens)

    def count_cost(self, route: str, model: str, key: str | None, usd: float) -> None:
        """A model call's cost (every call of a request: a cascade's small call too)."""
        if self.settings.metrics:
            names = self.names  # self.label, inline: once per model call
            self.cost.inc((route if route in names else UNKNOWN,
                           model if model in names else UNKNOWN, key or "none"), usd)

    def count_key_refusal(self, key: str, code: str) -> None:
        """A request its client key's policy refused (key ids are the configured ones)."""
        if self.settings.metrics:
            self.key_refusals.inc((key, code))

    def requests_by_model(self) -> dict[str, float]:
        """Requests answered since start, summed by model."""
        totals: dict[str, float] = {}
        for (_, model, _), count in list(self.requests.values.items()):
            totals[model] = totals.get(model, 0.0) + count
        return totals

    def count_escalation(self, route: str) -> None:
        if self.settings.metrics:
            self.escalations.inc((route,))

    def count_shadow(self, model: str, target: str, outcome: str) -> None:
        if self.settings.metrics:
            self.shadow.inc((model, target, outcome))

    def count_canary_alert(self, model: str, kind: str, source: str) -> None:
        if self.settings.metrics:
            self.canary_alerts.inc((model, kind, source))

    def prometheus_text(self) -> bytes:
        return self.registry.render() if self.settings.metrics else b""

    # -- traces ------------------------------------------------------------------------------

    def start_request_span(self, name: str, trace_headers: dict[str, str], request_id: str,
                           model: str) -> Any:
        """The request's server span if this request is sampled (not yet current; see
        :meth:`use`), else ``None``."""
        if self._tracer is None:
            return None
        parent = trace_headers.get("traceparent")
        if parent is not None:
            if not parent.endswith("-01"):
                return None  # the client's trace is not sampled: pass it on untouched
        elif random.random() >= self.settings.trace_sample_ratio:
            return None
        from opentelemetry.propagate import extract
        from opentelemetry.trace import SpanKind

        context = extract(trace_headers) if parent is not None else None
        return self._tracer.start_span(
            name, context=context, kind=SpanKind.SERVER,
            attributes={"tiergate.request_id": request_id, "tiergate.route": self.label(model)})

    def use(self, span: Any) -> AbstractContextManager[Any]:
        """Make ``span`` current for the calls inside (their spans become its children)."""
        if span is None:
            return nullcontext()
        return _Using(span)

    def span(self, name: str, **attributes: Any) -> AbstractContextManager[Any]:
        """A child of the current span — only inside a sampled request."""
        if self._tracer is None or not _recording():
            return nullcontext()
        span: AbstractContextManager[Any] = self._tracer.start_as_current_span(
            name, attributes=attributes)
        return span

    def end_span(self, span: Any, status: int, error: BaseException | None) -> None:
        if span is None:
            return
        from opentelemetry.trace import Status, StatusCode

        span.set_attribute("http.response.status_code", status)
        if status >= 500:
            span.set_status(Status(StatusCode.ERROR, clip(str(error)) if error else None))
        span.end()


_SAMPLED: ContextVar[bool] = ContextVar("tiergate_sampled", default=False)
"""Whether the code running is inside a sampled request's span (:meth:`Telemetry.use`): one
context variable read per question, where asking OpenTelemetry for the current span and whether
it records took a dozen Python calls — asked twice by every request, sampled or not."""


class _Using:
    """``span`` current (OpenTelemetry's ``use_span``), and :data:`_SAMPLED` said meanwhile."""

    __slots__ = ("_inner", "_recording", "_token")

    def __init__(self, span: Any) -> None:
        from opentelemetry.trace import use_span

        self._inner = use_span(span, end_on_exit=False)
        self._recording = bool(span.is_recording())

    def __enter__(self) -> Any:
        entered = self._inner.__enter__()
        self._token = _SAMPLED.set(self._recording)
        return entered

    def __exit__(self, *exc: Any) -> Any:
        _SAMPLED.reset(self._token)
        return self._inner.__exit__(*exc)


def _recording() -> bool:
    """Inside a sampled request? (Without a span made current by :meth:`Telemetry.use`,
    never.)"""
    return _SAMPLED.get()


def trace_headers_for_upstream(client_headers: dict[str, str]) -> dict[str, str]:
    """What to send upstream: the current span's ``traceparent`` inside a sampled request,
    else the client's own trace headers unchanged (if it sent any)."""
    if _recording():
        from opentelemetry.propagate import inject

        headers: dict[str, str] = {}
        inject(headers)
        return headers
    return client_headers
