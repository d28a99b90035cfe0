"""Tracing settings: from the spec or the OTEL_* environment, to the variables
every Ray process reads; the exporter Ray Serve loads; the rendered Ray pods."""

from pathlib import Path

import pytest
import yaml

from shardserve.api.contract import SPAN_PROCESSORS_IMPORT_PATH
from shardserve.api.spec import TelemetrySpec
from shardserve.api.tracing_env import TracingSettings, build_tracing_env, compute_tracing_settings, traces_url
from shardserve.api.validation import SpecError, load_file, parse_deployment
from shardserve.serve.telemetry.tracing import otlp_span_processors

ROOT = Path(__file__).resolve().parents[1]


def telemetry(**tracing) -> TelemetrySpec:
    return TelemetrySpec.model_validate({"tracing": tracing})


@pytest.mark.parametrize("endpoint, protocol, url", [
    ("http://collector:4318", "http/protobuf", "http://collector:4318/v1/traces"),
    ("http://collector:4318/", "http/protobuf", "http://collector:4318/v1/traces"),
    ("https://c.example.com/otlp/v1/traces", "http/protobuf", "https://c.example.com/otlp/v1/traces"),
    ("http://collector:4317", "grpc", "http://collector:4317"),
])
def test_traces_url_appends_the_signal_path_for_http_only(endpoint, protocol, url):
    assert traces_url(endpoint, protocol) == url


def test_off_without_spec_or_environment():
    assert compute_tracing_settings(None, {}) is None
    assert compute_tracing_settings(TelemetrySpec(), {"OTEL_SERVICE_NAME": "x"}) is None
    assert build_tracing_env(None) == {}


def test_spec_sets_endpoint_protocol_and_ratio_and_wins_over_the_environment():
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://elsewhere:4318", "OTEL_TRACES_SAMPLER": "traceidratio",
           "OTEL_TRACES_SAMPLER_ARG": "0.5"}
    settings = compute_tracing_settings(telemetry(endpoint="http://collector:4318", sampleRatio=0.25), env)
    assert settings == TracingSettings("http://collector:4318/v1/traces", "http/protobuf", 0.25, "shardserve", "spec")


@pytest.mark.parametrize("env, endpoint, protocol, ratio", [
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, "http://c:4318/v1/traces", "http/protobuf", 1.0),
    ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/custom"}, "http://c:4318/custom", "http/protobuf", 1.0),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
     "http://c:4317", "grpc", 1.0),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
      "OTEL_TRACES_SAMPLER_ARG": "0.05"}, "http://c:4318/v1/traces", "http/protobuf", 0.05),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_TRACES_SAMPLER": "always_off"},
     "http://c:4318/v1/traces", "http/protobuf", 0.0),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_TRACES_SAMPLER": "traceidratio",
      "OTEL_TRACES_SAMPLER_ARG": "not a number"}, "http://c:4318/v1/traces", "http/protobuf", 1.0),
])
def test_environment_follows_opentelemetry_variables(env, endpoint, protocol, ratio):
    settings = compute_tracing_settings(None, env)
    assert (settings.traces_endpoint, settings.protocol, settings.sample_ratio, settings.source) == (
        endpoint, protocol, ratio, "environment")


@pytest.mark.parametrize("switch", [{"OTEL_SDK_DISABLED": "true"}, {"OTEL_TRACES_EXPORTER": "none"},
                                    {"OTEL_TRACES_EXPORTER": "console"}])
def test_environment_can_keep_tracing_off(switch):
    assert compute_tracing_settings(None, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", **switch}) is None


def test_env_for_ray_processes_names_our_exporter_and_the_service():
    env = build_tracing_env(TracingSettings("http://c:4318/v1/traces", "http/protobuf", 0.1, "llm-gateway"))
    assert env == {
        "RAY_SERVE_TRACING_EXPORTER_IMPORT_PATH": SPAN_PROCESSORS_IMPORT_PATH,
        "RAY_SERVE_TRACING_SAMPLING_RATIO": "0.1",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces",
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf",
        "OTEL_SERVICE_NAME": "llm-gateway",
    }


def test_exporter_hook_is_what_ray_serve_accepts_and_reads_the_endpoint(monkeypatch):
    from opentelemetry.sdk.trace import SpanProcessor
    from ray.serve._private.tracing_utils import _validate_tracing_exporter, _validate_tracing_exporter_processors

    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://127.0.0.1:9/v1/traces")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf")
    _validate_tracing_exporter(otlp_span_processors)  # a function without parameters
    processors = otlp_span_processors()
    try:
        _validate_tracing_exporter_processors(processors)
        (processor,) = processors
        assert isinstance(processor, SpanProcessor)
        assert processor.span_exporter._endpoint == "http://127.0.0.1:9/v1/traces"
    finally:
        for p in processors:
            p.shutdown()


def test_spec_rejects_bad_tracing_settings():
    doc = yaml.safe_load((ROOT / "manifests" / "examples" / "tiny-cpu.yaml").read_text())
    for tracing, field in [({"endpoint": "http://c:4318", "sampleRatio": 1.5}, "sampleRatio"),
                           ({"endpoint": "http://c :4318"}, "endpoint"),
                           ({"sampleRatio": 0.5}, "endpoint"),
                           ({"endpoint": "http://c:4318", "protocol": "zipkin"}, "protocol")]:
        doc["spec"]["telemetry"] = {"tracing": tracing}
        with pytest.raises(SpecError, match=field):
            parse_deployment(doc)


def test_rendered_ray_pods_carry_the_spec_s_tracing_settings():
    from shardserve_operator.render import RenderOptions, render_children

    md = load_file(ROOT / "manifests" / "examples" / "llama-70b-tp4-pp2.yaml")
    (rayservice,) = [o for o in render_children(md, RenderOptions()) if o["kind"] == "RayService"]
    cluster = rayservice["spec"]["rayClusterConfig"]
    expected = build_tracing_env(compute_tracing_settings(md.spec.telemetry, {}))
    assert expected["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"] == "http://otel-collector.observability:4318/v1/traces"
    assert expected["RAY_SERVE_TRACING_SAMPLING_RATIO"] == "0.1"
    for group in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]:
        (container,) = group["template"]["spec"]["containers"]
        env = {e["name"]: e["value"] for e in container.get("env", [])}
        assert expected.items() <= env.items()

    tiny = load_file(ROOT / "manifests" / "examples" / "tiny-cpu.yaml")
    (rayservice,) = [o for o in render_children(tiny, RenderOptions()) if o["kind"] == "RayService"]
    for group in [rayservice["spec"]["rayClusterConfig"]["headGroupSpec"],
                  *rayservice["spec"]["rayClusterConfig"]["workerGroupSpecs"]]:
        (container,) = group["template"]["spec"]["containers"]
        assert not any(e["name"].startswith(("OTEL_", "RAY_SERVE_TRACING")) for e in container.get("env", []))
