"""The path Ray pods name as Serve's span exporter
(`shardserve.tracing:otlp_span_processors`); kept stable for RayServices
already rendered."""

from shardserve.serve.telemetry.tracing import otlp_span_processors

__all__ = ["otlp_span_processors"]
