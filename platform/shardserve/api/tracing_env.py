"""Tracing settings: from the spec or the standard OTEL_* variables, to the
environment every Ray process reads (pure: the operator uses it too).

Ray Serve reads its exporter and sampling ratio from RAY_SERVE_TRACING_*;
vLLM's engine processes read the OTEL_EXPORTER_OTLP_TRACES_* variables. The
decision is taken once and handed to every Ray process as environment
variables; off (None) sets nothing, so nothing traces.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Optional

from shardserve.api.contract import SPAN_PROCESSORS_IMPORT_PATH
from shardserve.api.spec import TelemetrySpec

DEFAULT_SERVICE_NAME = "shardserve"
HTTP_PROTOBUF = "http/protobuf"
GRPC = "grpc"
TRACES_PATH = "/v1/traces"

# The variables Ray processes read (set by build_tracing_env).
ENV_EXPORTER = "RAY_SERVE_TRACING_EXPORTER_IMPORT_PATH"
ENV_SAMPLING = "RAY_SERVE_TRACING_SAMPLING_RATIO"
ENV_TRACES_ENDPOINT = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
ENV_TRACES_PROTOCOL = "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"
ENV_SERVICE_NAME = "OTEL_SERVICE_NAME"

_RATIO_SAMPLERS = ("traceidratio", "parentbased_traceidratio")
_OFF_SAMPLERS = ("always_off", "parentbased_always_off")


@dataclass(frozen=True)
class TracingSettings:
    traces_endpoint: str  # the URL (http/protobuf) or address (grpc) spans are sent to
    protocol: str
    sample_ratio: float
    service_name: str = DEFAULT_SERVICE_NAME
    source: str = "spec"  # "spec" or "environment", for the start-up message

    def describe(self) -> str:
        return (f"tracing on: spans to {self.traces_endpoint} ({self.protocol}), "
                f"{self.sample_ratio:.0%} of new traces (from the {self.source})")


def traces_url(endpoint: str, protocol: str) -> str:
    """OTLP/HTTP sends traces to BASE/v1/traces; a URL already ending there is kept."""
    if protocol != HTTP_PROTOBUF or endpoint.rstrip("/").endswith(TRACES_PATH):
        return endpoint
    return endpoint.rstrip("/") + TRACES_PATH


def _ratio_from_env(env: Mapping[str, str]) -> float:
    sampler = env.get("OTEL_TRACES_SAMPLER", "").strip().lower()
    if sampler in _OFF_SAMPLERS:
        return 0.0
    if sampler in _RATIO_SAMPLERS:
        try:
            return min(1.0, max(0.0, float(env.get("OTEL_TRACES_SAMPLER_ARG", "1"))))
        except ValueError:
            return 1.0
    return 1.0  # OpenTelemetry's default sampler records every trace


def compute_tracing_settings(telemetry: Optional[TelemetrySpec], env: Mapping[str, str]) -> Optional[TracingSettings]:
    """Tracing settings from the spec, else from the OTEL_* environment; None is off.

    The environment follows OpenTelemetry's SDK variables: a traces endpoint
    (OTEL_EXPORTER_OTLP_TRACES_ENDPOINT as is, or OTEL_EXPORTER_OTLP_ENDPOINT
    plus /v1/traces), the protocol, the ratio samplers, OTEL_SERVICE_NAME,
    and OTEL_SDK_DISABLED / OTEL_TRACES_EXPORTER=none to keep it off.
    """
    service = env.get(ENV_SERVICE_NAME) or DEFAULT_SERVICE_NAME
    tracing = telemetry.tracing if telemetry is not None else None
    if tracing is not None:
        return TracingSettings(traces_url(tracing.endpoint, tracing.protocol), tracing.protocol,
                               tracing.sample_ratio, service, "spec")
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    exporters = env.get("OTEL_TRACES_EXPORTER", "otlp").lower()
    if "otlp" not in [e.strip() for e in exporters.split(",")]:
        return None
    protocol = (env.get(ENV_TRACES_PROTOCOL) or env.get("OTEL_EXPORTER_OTLP_PROTOCOL") or HTTP_PROTOBUF).strip()
    if protocol not in (HTTP_PROTOBUF, GRPC):
        protocol = HTTP_PROTOBUF
    if env.get(ENV_TRACES_ENDPOINT):
        endpoint = env[ENV_TRACES_ENDPOINT]
    elif env.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        endpoint = traces_url(env["OTEL_EXPORTER_OTLP_ENDPOINT"], protocol)
    else:
        return None
    return TracingSettings(endpoint, protocol, _ratio_from_env(env), service, "environment")


def build_tracing_env(settings: Optional[TracingSettings]) -> dict[str, str]:
    """Environment for every Ray process (Serve's proxy and replicas, vLLM's engine processes)."""
    if settings is None:
        return {}
    return {
        ENV_EXPORTER: SPAN_PROCESSORS_IMPORT_PATH,
        ENV_SAMPLING: repr(float(settings.sample_ratio)),
        ENV_TRACES_ENDPOINT: settings.traces_endpoint,
        # vLLM's engine processes read both (and default to grpc without the protocol).
        ENV_TRACES_PROTOCOL: settings.protocol,
        ENV_SERVICE_NAME: settings.service_name,
    }
