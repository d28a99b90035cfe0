"""Request spans: attributes from requests and responses, span lifetimes around
streams, errors, cancellation, and the trace context handed to the engine."""

import asyncio
from types import SimpleNamespace

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from ray.llm._internal.serve.core.protocol import RawRequestInfo
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse, StreamingResponse

from shardserve.serve.telemetry import spans as request_spans
from shardserve.serve.telemetry.spans import (
    ResponseFacts,
    build_request_attributes,
    build_status_attributes,
    build_trace_headers,
    trace_ingress_call,
    trace_replica_call,
)

CHUNK = ('data: {"id":"cmpl-1","object":"text_completion","created":1,"model":"tiny","choices":[{"index":0,'
         '"text":" a","logprobs":null,"finish_reason":null,"stop_reason":null}],"usage":null}\n\n')
LAST = ('data: {"id":"cmpl-1","object":"text_completion","created":1,"model":"tiny","choices":[{"index":0,'
        '"text":" b","logprobs":null,"finish_reason":"length","stop_reason":null}],"usage":null}\n\n')
USAGE = ('data: {"id":"cmpl-1","object":"text_completion","created":1,"model":"tiny","choices":[],'
         '"usage":{"prompt_tokens":4,"total_tokens":12,"completion_tokens":8,"prompt_tokens_details":null}}\n\n')


@pytest.fixture
def spans(monkeypatch):
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(request_spans, "tracing_enabled", lambda: True)
    monkeypatch.setattr(request_spans, "get_tracer", lambda: provider.get_tracer("test"))
    yield exporter
    provider.shutdown()


def test_request_attributes_follow_gen_ai_conventions():
    body = SimpleNamespace(model="tiny", max_tokens=None, max_completion_tokens=16, temperature=0.0, top_p=None,
                           seed=7, stream=True, n=2)
    assert build_request_attributes("chat", body) == {
        "gen_ai.operation.name": "chat", "gen_ai.request.model": "tiny", "gen_ai.request.max_tokens": 16,
        "gen_ai.request.temperature": 0.0, "gen_ai.request.seed": 7, "shardserve.request.stream": True,
        "gen_ai.request.choice.count": 2}
    assert build_request_attributes("text_completion", {"model": "tiny", "max_tokens": 4}) == {
        "gen_ai.operation.name": "text_completion", "gen_ai.request.model": "tiny",
        "gen_ai.request.max_tokens": 4, "shardserve.request.stream": False}
    assert build_status_attributes(200) == {"http.response.status_code": 200}
    assert build_status_attributes(429) == {"http.response.status_code": 429, "error.type": "429"}


def test_stream_chunks_give_id_model_finish_reasons_and_usage():
    facts = ResponseFacts()
    facts.read([CHUNK, CHUNK])
    facts.read([LAST, USAGE])
    assert facts.attributes() == {"gen_ai.response.id": "cmpl-1", "gen_ai.response.model": "tiny",
                                  "gen_ai.response.finish_reasons": ["length"],
                                  "gen_ai.usage.input_tokens": 4, "gen_ai.usage.output_tokens": 8}
    error = ResponseFacts()
    error.read('data: {"error": {"object": "error", "message": "boom", "type": "InternalServerError", "code": 503}}\n\n')
    assert error.attributes() == {"error.type": "503"}


def test_whole_responses_and_engine_errors():
    response = SimpleNamespace(id="chatcmpl-9", model="tiny",
                               choices=[SimpleNamespace(finish_reason="stop"), SimpleNamespace(finish_reason="length")],
                               usage=SimpleNamespace(prompt_tokens=5, completion_tokens=3))
    facts = ResponseFacts()
    facts.read(response)
    assert facts.attributes()["gen_ai.response.finish_reasons"] == ["stop", "length"]
    assert (facts.input_tokens, facts.output_tokens, facts.response_id) == (5, 3, "chatcmpl-9")
    failed = ResponseFacts()
    failed.read(SimpleNamespace(error=SimpleNamespace(code=400, message="too long")))
    assert failed.attributes() == {"error.type": "400"}


def test_trace_headers_replace_the_client_s_whatever_their_case():
    headers = {"Traceparent": "00-aaaa-bbbb-01", "tracestate": "x=1", "authorization": "Bearer k"}
    assert build_trace_headers(headers, {"traceparent": "00-cccc-dddd-01"}) == {
        "authorization": "Bearer k", "traceparent": "00-cccc-dddd-01"}


def test_ingress_span_ends_with_a_json_response(spans):
    async def call():
        return JSONResponse({"ok": True})

    body = SimpleNamespace(model="tiny", max_tokens=4, stream=False)
    response = asyncio.run(trace_ingress_call("chat", body, call()))
    assert response.status_code == 200
    (span,) = spans.get_finished_spans()
    assert span.name == "chat tiny"
    assert span.attributes["gen_ai.operation.name"] == "chat" and span.attributes["http.response.status_code"] == 200
    assert span.status.status_code == StatusCode.UNSET


def test_ingress_span_of_a_stream_ends_after_its_last_chunk(spans):
    async def chunks():
        yield "data: 1\n\n"
        assert not spans.get_finished_spans(), "the span must outlive the endpoint while the stream runs"
        yield "data: [DONE]\n\n"

    async def call():
        return StreamingResponse(chunks(), media_type="text/event-stream")

    async def consume():
        response = await trace_ingress_call("completions", SimpleNamespace(model="tiny", stream=True), call())
        return [c async for c in response.body_iterator]

    assert asyncio.run(consume()) == ["data: 1\n\n", "data: [DONE]\n\n"]
    (span,) = spans.get_finished_spans()
    assert span.name == "text_completion tiny" and span.attributes["shardserve.request.stream"] is True


@pytest.mark.parametrize("status, is_error", [(404, False), (503, True)])
def test_ingress_errors_are_recorded_and_5xx_mark_the_span_failed(spans, status, is_error):
    async def call():
        raise HTTPException(status, "nope")

    with pytest.raises(HTTPException):
        asyncio.run(trace_ingress_call("chat", SimpleNamespace(model="x"), call()))
    (span,) = spans.get_finished_spans()
    assert span.attributes["error.type"] == str(status)
    assert [e.name for e in span.events] == ["exception"]
    assert span.events[0].attributes["exception.message"] == "nope"
    assert (span.status.status_code == StatusCode.ERROR) is is_error


def test_replica_span_hands_the_engine_its_own_context_and_reads_the_stream(spans):
    seen = {}

    async def engine_stream():
        yield [CHUNK]
        yield [LAST, USAGE]

    async def call(request, raw_request_info):
        seen["headers"] = raw_request_info.headers
        return engine_stream()

    async def run():
        client = RawRequestInfo(headers={"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01", "x-request-id": "r"})
        stream = await trace_replica_call("completions", SimpleNamespace(model="tiny"), client, call, "replica-a")
        return [batch async for batch in stream]

    assert len(asyncio.run(run())) == 2
    (span,) = spans.get_finished_spans()
    ctx = span.get_span_context()
    assert seen["headers"]["traceparent"].startswith(f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-")
    assert seen["headers"]["x-request-id"] == "r"
    assert span.name == "replica text_completion tiny"
    assert span.attributes["shardserve.replica"] == "replica-a"
    assert "shardserve.adapter" not in span.attributes  # the base model
    assert span.attributes["gen_ai.response.finish_reasons"] == ("length",)
    assert span.attributes["gen_ai.usage.output_tokens"] == 8


def test_replica_span_names_the_adapter_a_request_ran_with(spans):
    async def engine_stream():
        yield [LAST]

    async def call(request, raw_request_info):
        return engine_stream()

    async def run():
        stream = await trace_replica_call("chat", SimpleNamespace(model="tiny-a"), None, call, "r", adapter="tiny-a")
        return [batch async for batch in stream]

    asyncio.run(run())
    (span,) = spans.get_finished_spans()
    assert span.attributes["shardserve.adapter"] == "tiny-a" and span.name == "replica chat tiny-a"


def test_replica_span_of_an_abandoned_stream_is_cancelled_not_failed(spans):
    async def engine_stream():
        yield [CHUNK]
        yield [CHUNK]

    async def call(request, raw_request_info):
        return engine_stream()

    async def run():
        stream = await trace_replica_call("chat", SimpleNamespace(model="tiny"), None, call, "r")
        await stream.__anext__()
        await stream.aclose()  # the client went away

    asyncio.run(run())
    (span,) = spans.get_finished_spans()
    assert span.attributes["shardserve.request.cancelled"] is True
    assert span.status.status_code == StatusCode.UNSET


def test_tracing_off_adds_nothing(monkeypatch):
    def no_tracer():
        raise AssertionError("no span may be created with tracing off")

    monkeypatch.setattr(request_spans, "tracing_enabled", lambda: False)
    monkeypatch.setattr(request_spans, "get_tracer", no_tracer)

    async def call(request, raw_request_info):
        return ("engine", raw_request_info)

    async def endpoint():
        return "response"

    assert asyncio.run(trace_replica_call("chat", SimpleNamespace(model="t"), "info", call, "r")) == ("engine", "info")
    assert asyncio.run(trace_ingress_call("chat", SimpleNamespace(model="t"), endpoint())) == "response"
