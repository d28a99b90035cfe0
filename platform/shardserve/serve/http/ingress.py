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
from collections.abc import Awaitable, Callable, Collection
from typing import Any, Optional, TypeVar, cast

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel
from ray.serve.handle import DeploymentHandle
from ray.serve.llm.deployment import LLMServer
from ray.serve.llm.ingress import OpenAiIngress
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, Response, StreamingResponse

from shardserve.serve.adapters import AdapterError, AdapterNames, ReplicaAdapters
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
from shardserve.serve.http.errors import clean_engine_message, describe_validation_errors, error_response
from shardserve.serve.http.limits import RequestLimits, find_invalid_unicode, find_limit_violation
from shardserve.serve.http.middleware import AdmissionLimit, ApiKeyAuth, BodySizeLimit, HeaderSizeLimit, JsonBodyOnly
from shardserve.serve.ray_private import ModelLookupHooks, OpenAIHTTPException, SetRequestIdMiddleware
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
        self._names = adapters.names if adapters is not None else AdapterNames(model_id)

    def _by_adapter_name(self, body: Any) -> Any:
        """`<model id>:<adapter>` asks for the adapter, which vLLM knows by its own name."""
        model = getattr(body, "model", None)
        if self._adapters is not None and isinstance(model, str) and model.startswith(f"{self._model_id}:"):
            body.model = model.removeprefix(f"{self._model_id}:")
        return body

    def _adapter_for(self, model: str) -> Optional[str]:
        return self._names.adapter_for(model)

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
            return error_response(503, "model replicas are not ready")
        return JSONResponse({"status": "ok", "models": [self._model_id]})


def _with_checked_body(parameter: inspect.Parameter) -> inspect.Parameter:
    annotation = parameter.annotation
    if parameter.name == "body" and isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return parameter.replace(annotation=checked_body(annotation))
    return parameter  # a union or a form: FastAPI's own parsing


def _not_served(message: str) -> Callable[[], Awaitable[JSONResponse]]:
    """A route the model cannot serve: 404 before its body is read."""
    async def refuse() -> JSONResponse:
        return error_response(404, message, code="unsupported_endpoint")

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
        return error_response(429, quota_message(admission), code="rate_limit_exceeded", headers=headers)
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
    return error_response(504, timeout_message(timeout_s or 0), code="request_timeout")


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
    return error_response(400, exc.message, param=exc.param, code=exc.code)


async def _on_body_rejected(_request: Request, exc: BodyRejected) -> JSONResponse:
    return error_response(exc.status_code, exc.message, param=exc.param)


async def _on_adapter_error(_request: Request, exc: AdapterError) -> JSONResponse:
    # From another replica, Ray wraps it in an error that is also an AdapterError; its cause has the message.
    cause = getattr(exc, "cause", exc)
    message = getattr(cause, "message", str(cause))
    if exc.status_code >= 500:
        logger.error("adapter failed: %s", message)
    return error_response(exc.status_code, message, param="model", code=exc.code)


async def _on_validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
    message, param = describe_validation_errors(list(exc.errors()))
    return error_response(400, message, param=param)


# FastAPI's words for a body its JSON parser gave up on, which say neither why nor where.
FASTAPI_PARSE_ERROR = "There was an error parsing the body"
PARSE_ERROR = "request body could not be parsed: it is not JSON, or nests arrays and objects too deeply"


async def _on_http_exception(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
    code = "model_not_found" if exc.status_code == 404 and "model" in str(exc.detail) else None
    message = PARSE_ERROR if exc.detail == FASTAPI_PARSE_ERROR else str(exc.detail)
    return error_response(exc.status_code, message, code=code, headers=getattr(exc, "headers", None))


async def _on_openai_exception(_request: Request, exc: OpenAIHTTPException) -> JSONResponse:
    message, param = clean_engine_message(exc.message)
    if exc.status_code >= 500:
        logger.error("request failed: %s", exc.internal_message or exc.message)
    return error_response(exc.status_code, message, param=param)


async def _on_unexpected(request: Request, exc: Exception) -> JSONResponse:
    logger.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(500, "internal error")


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
