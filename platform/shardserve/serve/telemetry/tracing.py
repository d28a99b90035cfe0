"""Tracing with OpenTelemetry: one setting switches on what Ray Serve and vLLM
already trace, and adds the spans neither has.

- Ray Serve traces its proxy, handle calls and replicas, and carries the W3C
  trace context (a client's `traceparent` included) through every handle
  call. It reads its exporter and sampling ratio from the environment of each
  Ray process (RAY_SERVE_TRACING_*); `otlp_span_processors` is the exporter.
- vLLM records a span per request in its engine (`llm_request`: tokens, time
  to first token, time in queue) when its `otlp_traces_endpoint` is set, and
  spans for its own start (model load, warm-up).
- shardserve adds a span per request in the ingress (what was asked, what the
  client got) and one in the model replica around the engine call (which
  replica, what the engine answered), and one per replica start
  (`shardserve.cold_start`).

Off (no endpoint) costs nothing: Serve creates no spans and vLLM no tracer.
The decision is taken once, from the spec or the standard OTEL_* variables,
and handed to every Ray process as environment variables.
"""

from __future__ import annotations

import os
from typing import Any

from shardserve.api.tracing_env import ENV_TRACES_PROTOCOL, GRPC, HTTP_PROTOBUF
from shardserve.serve import ray_private

TRACER_NAME = "shardserve"


def otlp_span_processors() -> list[Any]:
    """Ray Serve's tracing exporter hook: a batching OTLP exporter configured by
    the OTEL_EXPORTER_OTLP_* variables (endpoint, protocol, headers, timeout)."""
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    if os.environ.get(ENV_TRACES_PROTOCOL, HTTP_PROTOBUF) == GRPC:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter  # type: ignore[assignment]
    return [BatchSpanProcessor(OTLPSpanExporter())]


def tracing_enabled() -> bool:
    """Whether Serve set up tracing in this process (it does in the proxy and every replica)."""
    return ray_private.tracing_enabled()


def get_tracer() -> Any:
    from opentelemetry import trace

    return trace.get_tracer(TRACER_NAME)
