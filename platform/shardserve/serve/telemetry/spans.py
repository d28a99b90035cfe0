"""A span per request in the ingress and in the model replica.

    chat tiny                 ingress: what was asked, the HTTP status the client got
      └ replica chat tiny     model replica: which replica, the response id, finish reasons, usage
          └ llm_request       vLLM's engine span: prompt and completion tokens, time to
                              first token, time in queue, end-to-end latency

Ray Serve's own spans (its proxy's, when Serve proxies, and the replica's
request span) sit around these, and Serve carries the W3C trace context
across processes. The replica
hands the engine its own span as `traceparent`, replacing the client's, so
vLLM's span is the replica span's child.

Attribute names follow OpenTelemetry's generative-AI semantic conventions
(gen_ai.*). Every function here returns at once when tracing is off.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
from collections.abc import AsyncGenerator, AsyncIterable, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Optional, TypeVar

from starlette.responses import Response, StreamingResponse

from shardserve.serve.ray_private import RawRequestInfo
from shardserve.serve.telemetry.tracing import get_tracer, tracing_enabled

Req = TypeVar("Req")

# gen_ai.operation.name of OpenTelemetry's GenAI conventions; other routes go by their own name.
OPERATIONS = {"chat": "chat", "completions": "text_completion", "embeddings": "embeddings"}
REPLICA_ATTRIBUTE = "shardserve.replica"
# The LoRA adapter a request ran with (its model is the adapter's name too).
ADAPTER_ATTRIBUTE = "shardserve.adapter"
# Where the ingress sent an adapter's request: "here" (this replica) or
# "elsewhere" (through Serve's router, to a replica that holds it).
ROUTE_ATTRIBUTE = "shardserve.adapter.route"
# The request's tenant (its API key's name) and its quota's decision: admitted, or the quota that refused it.
TENANT_ATTRIBUTE = "shardserve.tenant"
QUOTA_ATTRIBUTE = "shardserve.tenant.quota"
STREAM_ATTRIBUTE = "shardserve.request.stream"
CANCELLED_ATTRIBUTE = "shardserve.request.cancelled"
# The client went away, or the request was cancelled: not an error of ours.
_CANCELLED = (GeneratorExit, asyncio.CancelledError)
_TRACE_HEADERS = ("traceparent", "tracestate")

# A stream's chunks are JSON text ("data: {...}"); only the few that finish a
# choice or carry usage are read, by pattern, so tracing parses no JSON.
_FINISH_REASON = re.compile(r'"finish_reason":"([^"]+)"')
_RESPONSE_ID = re.compile(r'"id":"([^"]+)"')
_RESPONSE_MODEL = re.compile(r'"model":"([^"]+)"')
_PROMPT_TOKENS = re.compile(r'"prompt_tokens":(\d+)')
_COMPLETION_TOKENS = re.compile(r'"completion_tokens":(\d+)')
_ERROR = re.compile(r'"error":\s*\{')
_ERROR_CODE = re.compile(r'"error":\s*\{.*?"code":\s*(\d+)')


def build_span_name(operation: str, model: Optional[str]) -> str:
    return f"{operation} {model}" if model else operation


def build_request_attributes(operation: str, body: Any) -> dict[str, Any]:
    """gen_ai.request.* from an OpenAI request body (pydantic model or dict)."""
    get = body.get if isinstance(body, dict) else (lambda name, default=None: getattr(body, name, default))
    max_tokens = get("max_completion_tokens") or get("max_tokens")
    attributes = {
        "gen_ai.operation.name": operation,
        "gen_ai.request.model": get("model"),
        "gen_ai.request.max_tokens": max_tokens,
        "gen_ai.request.temperature": get("temperature"),
        "gen_ai.request.top_p": get("top_p"),
        "gen_ai.request.seed": get("seed"),
        STREAM_ATTRIBUTE: bool(get("stream")),
    }
    n = get("n")
    if n is not None and n != 1:
        attributes["gen_ai.request.choice.count"] = n
    return {k: v for k, v in attributes.items() if v is not None}


def build_status_attributes(status_code: int) -> dict[str, Any]:
    attributes: dict[str, Any] = {"http.response.status_code": status_code}
    if status_code >= 400:
        attributes["error.type"] = str(status_code)
    return attributes


@dataclass
class ResponseFacts:
    """What the replica learns from the engine's answer, for its span."""

    response_id: Optional[str] = None
    model: Optional[str] = None
    finish_reasons: list[str] = field(default_factory=list)
    input_tokens: Optional[int] = None
    output_tokens: Optional[int] = None
    error_code: Optional[int] = None

    def read_chunk(self, text: str) -> None:
        """One streamed chunk ("data: {...}"): cheap substring tests first."""
        if self.response_id is None:
            found = _RESPONSE_ID.search(text)
            self.response_id = found.group(1) if found else None
            found = _RESPONSE_MODEL.search(text)
            self.model = found.group(1) if found else self.model
        if '"finish_reason":"' in text:
            self.finish_reasons.extend(_FINISH_REASON.findall(text))
        if '"usage":{' in text:
            self._read_usage(text)
        if '"error":' in text and _ERROR.search(text):
            found = _ERROR_CODE.search(text)
            self.error_code = int(found.group(1)) if found else 500

    def _read_usage(self, text: str) -> None:
        prompt, completion = _PROMPT_TOKENS.search(text), _COMPLETION_TOKENS.search(text)
        if prompt:
            self.input_tokens = int(prompt.group(1))
        if completion:
            self.output_tokens = int(completion.group(1))

    def read_response(self, response: Any) -> None:
        """A whole (non-streamed) response object, or vLLM's ErrorResponse."""
        error = getattr(response, "error", None)
        if error is not None:
            self.error_code = int(getattr(error, "code", 500) or 500)
            return
        self.response_id = getattr(response, "id", None)
        self.model = getattr(response, "model", None)
        self.finish_reasons = [c.finish_reason for c in getattr(response, "choices", []) or [] if c.finish_reason]
        usage = getattr(response, "usage", None)
        if usage is not None:
            self.input_tokens = getattr(usage, "prompt_tokens", None)
            self.output_tokens = getattr(usage, "completion_tokens", None)

    def read(self, item: Any) -> None:
        """Whatever the replica's stream yields: a batch (list), a chunk (str) or a response."""
        if isinstance(item, list):
            for part in item:
                self.read(part)
        elif isinstance(item, str):
            self.read_chunk(item)
        else:
            self.read_response(item)

    def attributes(self) -> dict[str, Any]:
        attributes = {
            "gen_ai.response.id": self.response_id,
            "gen_ai.response.model": self.model,
            "gen_ai.response.finish_reasons": list(self.finish_reasons) or None,
            "gen_ai.usage.input_tokens": self.input_tokens,
            "gen_ai.usage.output_tokens": self.output_tokens,
        }
        if self.error_code is not None:
            attributes["error.type"] = str(self.error_code)
        return {k: v for k, v in attributes.items() if v is not None}


def _record_error(span: Any, exc: BaseException) -> None:
    from opentelemetry.trace import Status, StatusCode

    if isinstance(exc, _CANCELLED):
        span.set_attribute(CANCELLED_ATTRIBUTE, True)
        return
    status = getattr(exc, "status_code", None)
    # HTTP exceptions keep their text in .message or .detail, not in str().
    message = str(getattr(exc, "message", None) or getattr(exc, "detail", None) or exc)[:2000]
    span.record_exception(exc, attributes={"exception.message": message})
    span.set_attribute("error.type", str(status) if isinstance(status, int) else type(exc).__qualname__)
    if not isinstance(status, int) or status >= 500:
        span.set_status(Status(StatusCode.ERROR, message[:500]))


def _set_error_status(span: Any, status_code: Optional[int], message: str) -> None:
    if status_code is not None and status_code >= 500:
        from opentelemetry.trace import Status, StatusCode

        span.set_status(Status(StatusCode.ERROR, message))


async def trace_ingress_call(endpoint: str, body: Any, call: Awaitable[Response]) -> Response:
    """Awaits the ingress endpoint's `call` inside a request span; a streamed
    response keeps the span open until its last chunk is sent."""
    if not tracing_enabled():
        return await call
    from opentelemetry import trace

    operation = OPERATIONS.get(endpoint, endpoint)
    span = get_tracer().start_span(build_span_name(operation, getattr(body, "model", None)),
                                   attributes=build_request_attributes(operation, body))
    try:
        with trace.use_span(span, end_on_exit=False, record_exception=False, set_status_on_exception=False):
            response = await call
    except BaseException as exc:
        _record_error(span, exc)
        span.end()
        raise
    status = response.status_code
    span.set_attributes(build_status_attributes(status))
    _set_error_status(span, status, f"HTTP {status}")
    if isinstance(response, StreamingResponse):
        response.body_iterator = _end_span_after(span, response.body_iterator)
    else:
        span.end()
    return response


async def _end_span_after(span: Any, iterator: AsyncIterable[Any]) -> AsyncGenerator[Any, None]:
    try:
        async for chunk in iterator:
            yield chunk
    except BaseException as exc:
        _record_error(span, exc)
        raise
    finally:
        span.end()


def record_adapter_route(adapter: str, here: bool) -> None:
    """On the current (ingress) span: the request's adapter and where it went."""
    if not tracing_enabled():
        return
    from opentelemetry import trace

    trace.get_current_span().set_attributes({ADAPTER_ATTRIBUTE: adapter, ROUTE_ATTRIBUTE: "here" if here else "elsewhere"})


def record_tenant_decision_on_span(tenant: str, outcome: str) -> None:
    """On the current (ingress) span: the request's tenant and what its quota decided."""
    if not tracing_enabled():
        return
    from opentelemetry import trace

    trace.get_current_span().set_attributes({TENANT_ATTRIBUTE: tenant, QUOTA_ATTRIBUTE: outcome})


def build_trace_headers(headers: dict[str, str], carrier: dict[str, str]) -> dict[str, str]:
    """The request's headers with the trace context replaced by `carrier`."""
    kept = {k: v for k, v in headers.items() if k.lower() not in _TRACE_HEADERS}
    return {**kept, **carrier}


def _with_current_trace_context(raw_request_info: Optional[RawRequestInfo]) -> RawRequestInfo:
    """RawRequestInfo whose traceparent is the current span (vLLM reads it from the headers)."""
    from opentelemetry.propagate import inject

    carrier: dict[str, str] = {}
    inject(carrier)
    if raw_request_info is None:
        return RawRequestInfo(headers=carrier)
    return dataclasses.replace(raw_request_info, headers=build_trace_headers(dict(raw_request_info.headers), carrier))


async def trace_replica_call(
    endpoint: str, request: Req, raw_request_info: Optional[RawRequestInfo],
    call: Callable[[Req, Optional[RawRequestInfo]], Awaitable[AsyncGenerator[Any, None]]], replica: str,
    adapter: Optional[str] = None,
) -> AsyncGenerator[Any, None]:
    """Runs the replica's engine call inside a span that ends with the engine's stream."""
    if not tracing_enabled():
        return await call(request, raw_request_info)
    from opentelemetry import trace

    operation = OPERATIONS.get(endpoint, endpoint)
    model = getattr(request, "model", None)
    attributes = {"gen_ai.operation.name": operation, "gen_ai.request.model": model, REPLICA_ATTRIBUTE: replica,
                  ADAPTER_ATTRIBUTE: adapter}
    span = get_tracer().start_span(build_span_name(f"replica {operation}", model),
                                   attributes={k: v for k, v in attributes.items() if v is not None})
    try:
        with trace.use_span(span, end_on_exit=False, record_exception=False, set_status_on_exception=False):
            stream = await call(request, _with_current_trace_context(raw_request_info))
    except BaseException as exc:
        _record_error(span, exc)
        span.end()
        raise
    return _observe_stream(span, stream)


async def _observe_stream(span: Any, stream: AsyncGenerator[Any, None]) -> AsyncGenerator[Any, None]:
    facts = ResponseFacts()
    try:
        async for item in stream:
            if span.is_recording():
                facts.read(item)
            yield item
    except BaseException as exc:
        _record_error(span, exc)
        raise
    finally:
        span.set_attributes(facts.attributes())
        _set_error_status(span, facts.error_code, f"engine error {facts.error_code}")
        span.end()
