"""The HTTP ingress: Ray Serve LLM's OpenAI ingress on our own FastAPI app,
which adds a health route, API keys, request limits, admission, and answers
every error in OpenAI's shape. Everything here runs before a request reaches
the engine.

The app is served by the model replica itself (`build_ingress_app`): the
ingress calls the replica's methods in-process (calls.py), so no Ray hop
lies between the HTTP server and the engine."""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
from collections.abc import Awaitable, Callable, Collection, Mapping
from typing import Any, Optional, TypeVar, cast

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel
from ray.serve.handle import DeploymentHandle
from ray.serve.llm.deployment import LLMServer
from ray.serve.llm.ingress import OpenAiIngress
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shardserve.serve.adapters import AdapterError, AdapterNames, ReplicaAdapters
from shardserve.serve.http.api_keys import KeyStore, bearer_token, keys_configured, match_key
from shardserve.serve.http.body import BodyRejected, checked_body
from shardserve.serve.http.calls import (
    InProcessHandle,
    cancel_calls,
    finish_calls,
    stream_until,
    timeout_message,
    tracking_calls,
)
from shardserve.serve.http.endpoints import ENDPOINTS, unsupported_message
from shardserve.serve.http.errors import clean_engine_message, describe_validation_errors, openai_error
from shardserve.serve.http.limits import RequestLimits, find_invalid_unicode, find_limit_violation
from shardserve.serve.ray_private import ModelLookupHooks, OpenAIHTTPException, SetRequestIdMiddleware
from shardserve.serve.telemetry.metrics import record_rejected
from shardserve.serve.telemetry.spans import record_adapter_route, trace_ingress_call
from shardserve.serve.tenants.admission import (
    TENANT_STATE,
    TenantQuotas,
    apply_priority,
    quota_message,
    record_tenant_decision,
    settled_stream,
    usage_from_json,
)
from shardserve.serve.tenants.ledger import ratelimit_headers

logger = logging.getLogger(__name__)
Body = TypeVar("Body")
HEALTH_TIMEOUT_S = 5.0
RETRY_AFTER_S = 1
JSON_TYPES = ("application/json",)
FORM_TYPES = ("multipart/form-data",)
FORM_PATH_PREFIX = "/v1/audio/"


class ShardserveIngress(ModelLookupHooks, OpenAiIngress):
    """Ray Serve LLM's OpenAI routes for one model and its LoRA adapters,
    served by the model replica `server` in this process.

    A request for the base model, or for an adapter this replica holds, is
    served here. One for an adapter it does not hold goes through Serve's
    router (`elsewhere`), which prefers a replica that holds it; with none,
    the replica holding the fewest adapters loads it.
    """

    def __init__(self, server: LLMServer, model_id: str, model_card: Any, adapters: Optional[ReplicaAdapters] = None,
                 elsewhere: Optional[Callable[[str], Any]] = None):
        # Stands in for a DeploymentHandle: the ingress calls options() and <method>.remote() only.
        self._here = InProcessHandle(server)
        super().__init__(llm_deployments={model_id: cast("DeploymentHandle[Any]", self._here)},
                         model_cards={model_id: model_card})
        self._server, self._model_id = server, model_id
        self._adapters, self._elsewhere = adapters, elsewhere

    def _by_adapter_name(self, body: Any) -> Any:
        """`<model id>:<adapter>` asks for the adapter, which vLLM knows by its own name."""
        model = getattr(body, "model", None)
        if self._adapters is not None and isinstance(model, str) and model.startswith(f"{self._model_id}:"):
            body.model = model.removeprefix(f"{self._model_id}:")
        return body

    def _adapter_for(self, model: str) -> Optional[str]:
        names = self._adapters.names if self._adapters is not None else AdapterNames(self._model_id)
        return names.adapter_for(model)

    async def model_for(self, model: Optional[str]) -> str:
        if model is None:
            return self._model_id
        adapter = self._adapter_for(model)  # AdapterNotFound for a name this endpoint does not serve
        if adapter is not None and self._adapters is not None and self._elsewhere is not None:
            await self._adapters.look_around(adapter)
        return model

    def handle_for(self, model_id: str) -> Any:
        adapter = self._adapter_for(model_id)
        if adapter is None:
            return self._here.options(stream=True)
        assert self._adapters is not None
        here = self._elsewhere is None or self._adapters.serve_here(adapter)
        record_adapter_route(adapter, here)
        if here or self._elsewhere is None:
            return self._here.options(stream=True, multiplexed_model_id=adapter)
        return self._elsewhere(adapter)

    async def models(self) -> Any:
        """The model, then its adapters (each with `metadata.parent`)."""
        listing = await super().models()
        if self._adapters is not None:
            listing.data.extend(self._adapters.card(name) for name in self._adapters.listed())
        return listing

    async def model_data(self, model: str) -> Any:
        adapter = self._adapter_for(model)
        if adapter is None or self._adapters is None:
            return await super().model_data(model)
        return self._adapters.card(adapter)

    def guarded(self, name: str) -> Callable[[Any, Request], Awaitable[Response]]:
        """OpenAiIngress's POST route `name` behind the body checks and the
        request timeout, inside a request span. FastAPI parses the body into
        the type the route names, through `checked_body`."""
        route = getattr(super(), name)

        @functools.wraps(route)
        async def call(body: Any, request: Request) -> Response:
            body = self._by_adapter_name(body)
            return await trace_ingress_call(name, body, _checked_call(route, body, request))

        signature = inspect.signature(route)
        call.__signature__ = signature.replace(  # type: ignore[attr-defined]
            parameters=[_with_checked_body(p) for p in signature.parameters.values()])
        return call

    async def health(self) -> JSONResponse:
        """200 when the model replica answers its health check, else 503."""
        try:
            await asyncio.wait_for(self._server.check_health(), HEALTH_TIMEOUT_S)
        except Exception as err:  # any failure means "not ready"
            logger.warning("health check failed: %r", err)
            return JSONResponse(openai_error(503, "model replicas are not ready"), status_code=503)
        return JSONResponse({"status": "ok", "models": [self._model_id]})


def _with_checked_body(parameter: inspect.Parameter) -> inspect.Parameter:
    annotation = parameter.annotation
    if parameter.name == "body" and isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return parameter.replace(annotation=checked_body(annotation))
    return parameter  # a union or a form: FastAPI's own parsing


def _not_served(message: str) -> Callable[[], Awaitable[JSONResponse]]:
    """A route the model cannot serve: 404 before its body is read."""
    async def refuse() -> JSONResponse:
        return _error_response(404, message, code="unsupported_endpoint")

    return refuse


async def _checked_call(endpoint: Callable[[Body, Request], Awaitable[Response]], body: Body, request: Request) -> Response:
    """Body checks, then the tenant's quota; past the request timeout the client
    gets a 504 and the engine stops generating."""
    await _check_body(request)
    quotas: Optional[TenantQuotas] = getattr(request.app.state, "tenant_quotas", None)
    if quotas is None:
        return await _timed_call(endpoint, body, request)
    admission = await quotas.admit(request.scope.get("state", {}).get(TENANT_STATE), await request.body(), body)
    record_tenant_decision(request.app.state.application, admission)
    headers = ratelimit_headers(admission.decision)
    if not admission.decision.admitted:
        return _error_response(429, quota_message(admission), code="rate_limit_exceeded", headers=headers)
    apply_priority(body, admission.limits)
    try:
        response = await _timed_call(endpoint, body, request)
    except BaseException:
        quotas.finish(admission, None)
        raise
    response.headers.update(headers)
    if isinstance(response, StreamingResponse):
        response.body_iterator = settled_stream(response.body_iterator, quotas, admission)
    else:
        quotas.finish(admission, usage_from_json(bytes(response.body)) if response.status_code == 200 else 0)
    return response


async def _timed_call(endpoint: Callable[[Body, Request], Awaitable[Response]], body: Body, request: Request) -> Response:
    limits = getattr(request.app.state, "limits", None)
    timeout_s = limits.request_timeout_seconds if limits else None
    deadline = asyncio.get_running_loop().time() + timeout_s if timeout_s else None
    timer = asyncio.timeout_at(deadline)
    with tracking_calls() as calls:
        try:
            async with timer:
                response = await endpoint(body, request)
        except BaseException:  # a timeout, an error, or the client went away before the first token
            cancel_calls(calls)
            if timer.expired():
                return _timed_out(timeout_s)
            raise
        # vLLM answers a cancelled request with an error response ("Client
        # disconnected") instead of raising: the timer tells what happened.
        if timer.expired():
            cancel_calls(calls)
            return _timed_out(timeout_s)
    if isinstance(response, StreamingResponse):
        response.body_iterator = stream_until(response.body_iterator, deadline, timeout_s, calls)
    else:
        await finish_calls(calls)  # the replica's spans end before the ingress span
    return response


def _timed_out(timeout_s: Optional[float]) -> JSONResponse:
    return _error_response(504, timeout_message(timeout_s or 0), code="request_timeout")


async def _check_body(request: Request) -> None:
    raw = await request.body()
    problem = find_invalid_unicode(raw)
    if problem:
        raise BodyRejected(problem.message, problem.param)
    limits = getattr(request.app.state, "limits", None)
    if limits is not None:
        try:
            # FastAPI parsed this body for the route on this same Request, which keeps the result.
            body = await request.json()
        except ValueError:
            return  # the schema already accepted it; nothing more to bound
        found = find_limit_violation(body, limits)
        if found:
            raise RequestLimitError(found.message, found.param, found.code)


class RequestLimitError(Exception):
    status_code = 400  # what the client gets; request spans record it

    def __init__(self, message: str, param: Optional[str], code: Optional[str]):
        super().__init__(message)
        self.message, self.param, self.code = message, param, code


async def _on_limit_error(_request: Request, exc: RequestLimitError) -> JSONResponse:
    return _error_response(400, exc.message, param=exc.param, code=exc.code)


async def _on_body_rejected(_request: Request, exc: BodyRejected) -> JSONResponse:
    return _error_response(exc.status_code, exc.message, param=exc.param)


def _error_response(status: int, message: str, param: Optional[str] = None, code: Optional[str] = None,
                    headers: Optional[Mapping[str, str]] = None) -> JSONResponse:
    return JSONResponse(openai_error(status, message, param=param, code=code), status_code=status, headers=headers)


async def _on_adapter_error(_request: Request, exc: AdapterError) -> JSONResponse:
    # From another replica, Ray wraps it in an error that is also an AdapterError; its cause has the message.
    cause = getattr(exc, "cause", exc)
    message = getattr(cause, "message", str(cause))
    if exc.status_code >= 500:
        logger.error("adapter failed: %s", message)
    return _error_response(exc.status_code, message, param="model", code=exc.code)


async def _on_validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
    message, param = describe_validation_errors(list(exc.errors()))
    return _error_response(400, message, param=param)


# FastAPI's words for a body its JSON parser gave up on, which say neither why nor where.
FASTAPI_PARSE_ERROR = "There was an error parsing the body"
PARSE_ERROR = "request body could not be parsed: it is not JSON, or nests arrays and objects too deeply"


async def _on_http_exception(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
    code = "model_not_found" if exc.status_code == 404 and "model" in str(exc.detail) else None
    message = PARSE_ERROR if exc.detail == FASTAPI_PARSE_ERROR else str(exc.detail)
    return _error_response(exc.status_code, message, code=code, headers=getattr(exc, "headers", None))


async def _on_openai_exception(_request: Request, exc: OpenAIHTTPException) -> JSONResponse:
    message, param = clean_engine_message(exc.message)
    if exc.status_code >= 500:
        logger.error("request failed: %s", exc.internal_message or exc.message)
    return _error_response(exc.status_code, message, param=param)


def _is_api_post(scope: Scope) -> bool:
    """A POST: every POST route is an API call (/v1/*, /tokenize, /detokenize),
    and admission and the body checks apply to all of them."""
    return bool(scope["type"] == "http" and scope["method"] == "POST")


class AdmissionLimit:
    """429 `queue_full` once a replica holds `max_admitted` requests: the engine's
    batch (maxOngoingRequests) plus its queue (maxQueuedRequests). Admitted
    requests wait in vLLM's own scheduler queue, where the autoscaler sees them.
    Rejections count in the metrics of Serve application `application`."""

    def __init__(self, app: ASGIApp, max_admitted: int, application: str = ""):
        self.app = app
        self.max_admitted = max_admitted
        self.application = application
        self.admitted = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not _is_api_post(scope):
            await self.app(scope, receive, send)
            return
        if self.admitted >= self.max_admitted:
            await _queue_full(self.application)(scope, receive, send)
            return
        self.admitted += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.admitted -= 1


def _queue_full(application: str) -> JSONResponse:
    # The replica's queue is full: tell the client at once when to come back.
    record_rejected(application, "queue_full")
    return _error_response(
        429,
        f"the model's queue is full; retry after {RETRY_AFTER_S}s",
        code="queue_full",
        headers={"Retry-After": str(RETRY_AFTER_S)},
    )


async def _on_unexpected(request: Request, exc: Exception) -> JSONResponse:
    logger.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return _error_response(500, "internal error")


class JsonBodyOnly:
    """415 for POSTs whose body is not declared as JSON (a form, for the audio
    routes: they carry a file)."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if _is_api_post(scope):
            content_type = dict(scope["headers"]).get(b"content-type", b"").decode("latin-1")
            wanted = FORM_TYPES if scope["path"].startswith(FORM_PATH_PREFIX) else JSON_TYPES
            if content_type.split(";")[0].strip().lower() not in wanted:
                response = _error_response(415, f"Content-Type must be {' or '.join(wanted)}",
                                           code="unsupported_media_type")
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


# HAProxy, in front of the replica, holds headers up to 64 KiB
# (RAY_SERVE_ENV); below that, this limit answers in OpenAI's shape. nginx's
# default is 4 x 8 KiB; OpenAI clients send well under 2 KiB.
MAX_HEADER_BYTES = 32 * 1024


class HeaderSizeLimit:
    """431 when the request's headers add up to more than MAX_HEADER_BYTES."""

    def __init__(self, app: ASGIApp, max_bytes: int = MAX_HEADER_BYTES):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and sum(len(k) + len(v) + 4 for k, v in scope["headers"]) > self.max_bytes:
            response = _error_response(431, f"request headers are larger than {self.max_bytes} bytes",
                                       code="headers_too_large", headers={"Connection": "close"})
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


class BodySizeLimit:
    """413 for a POST whose body exceeds the limit (declared or streamed).

    Reads the body (it is read whole downstream anyway) and hands it on.
    """

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not _is_api_post(scope):
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"").decode("latin-1")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await self._too_large(scope, receive, send)
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away before sending its body
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._too_large(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = _error_response(
            413, f"request body is larger than {self.max_bytes} bytes", param=None, code="request_too_large",
            headers={"Connection": "close"},
        )
        await response(scope, receive, send)


class ApiKeyAuth:
    """Every path but /health needs `Authorization: Bearer <key>` when keys are in use.

    In use when the spec names an API key Secret (`required`) or the replica's
    environment names keys; required with no keys found refuses everything.
    """

    OPEN_PATHS = ("/health",)

    def __init__(self, app: ASGIApp, required: bool):
        self.app = app
        self.required = required
        self._store: Optional[KeyStore] = None
        self._enabled: Optional[bool] = None

    def _keys(self) -> Optional[tuple[tuple[Optional[str], str], ...]]:
        """None when auth is off; else the current (name, key) entries (possibly none)."""
        if self._enabled is None:
            self._enabled = self.required or keys_configured()
            if self._enabled:
                self._store = KeyStore()
                if not self._store.entries():
                    logger.error("API keys are required but none were found (%s)", "SHARDSERVE_API_KEYS[_FILE]")
        return self._store.entries() if self._store is not None else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        keys = self._keys()
        if keys is not None:
            header = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
            token = bearer_token(header)
            matched, name = match_key(token, keys)
            # The key's name is the request's tenant (request.state.tenant): nothing the client sends sets it.
            scope.setdefault("state", {})[TENANT_STATE] = name
            if not matched:
                message = ("Missing API key: send it as 'Authorization: Bearer <key>'." if token is None
                           else "Incorrect API key provided.")
                response = _error_response(401, message, code="invalid_api_key",
                                           headers={"WWW-Authenticate": "Bearer"})
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


E = TypeVar("E", bound=Exception)


def _add_exception_handler(app: FastAPI, kind: type[E], handler: Callable[[Request, E], Awaitable[Response]]) -> None:
    """Starlette types every handler as taking any exception; each of these takes the class it answers."""
    app.add_exception_handler(kind, cast(Callable[[Request, Exception], Awaitable[Response]], handler))


def build_fastapi_app(limits: Optional[RequestLimits] = None, require_api_key: bool = False,
                      application: str = "", tenant_quotas: Optional[TenantQuotas] = None) -> FastAPI:
    """The app with the checks every request passes; `application` names the
    Serve application in metrics."""
    limits = limits or RequestLimits()
    app = FastAPI()
    app.state.limits = limits
    app.state.application = application
    app.state.tenant_quotas = tenant_quotas
    _add_exception_handler(app, RequestValidationError, _on_validation_error)
    _add_exception_handler(app, StarletteHTTPException, _on_http_exception)
    _add_exception_handler(app, OpenAIHTTPException, _on_openai_exception)
    _add_exception_handler(app, RequestLimitError, _on_limit_error)
    _add_exception_handler(app, BodyRejected, _on_body_rejected)
    _add_exception_handler(app, AdapterError, _on_adapter_error)
    _add_exception_handler(app, Exception, _on_unexpected)
    # Outermost last: request id, header size, API key, admission, body size, content type.
    app.add_middleware(JsonBodyOnly)
    app.add_middleware(BodySizeLimit, max_bytes=limits.max_request_bytes)
    app.add_middleware(AdmissionLimit, max_admitted=limits.max_admitted, application=application)
    app.add_middleware(ApiKeyAuth, required=require_api_key)
    app.add_middleware(HeaderSizeLimit)
    app.add_middleware(SetRequestIdMiddleware)
    return app


def build_ingress_app(server: LLMServer, model_id: str, model_card: Any, limits: Optional[RequestLimits] = None,
                      require_api_key: bool = False, application: str = "",
                      model_tasks: Collection[str] = ("generate",), adapters: Optional[ReplicaAdapters] = None,
                      elsewhere: Optional[Callable[[str], Any]] = None,
                      tenant_quotas: Optional[TenantQuotas] = None) -> FastAPI:
    """The replica's HTTP app: the ingress's routes, calling `server` (the
    model replica itself) in this process; the routes `model_tasks` cannot
    serve answer 404. `elsewhere(adapter)` is a handle to the replicas, for
    an adapter this one does not hold."""
    app = build_fastapi_app(limits, require_api_key, application, tenant_quotas)
    ingress = ShardserveIngress(server, model_id, model_card, adapters, elsewhere)
    app.get("/health")(ingress.health)
    app.get("/v1/models")(ingress.models)
    app.get("/v1/models/{model:path}")(ingress.model_data)
    for endpoint in ENDPOINTS:
        if endpoint.served_for(model_tasks):
            app.post(endpoint.path)(ingress.guarded(endpoint.name))
        else:
            app.post(endpoint.path)(_not_served(unsupported_message(endpoint, model_id, model_tasks)))
    return app
