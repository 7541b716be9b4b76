"""Telemetry: Prometheus metrics and OpenTelemetry traces, with bounded label sets."""
