"""The HTTP ingress: Ray Serve LLM's OpenAI ingress on our own FastAPI app,
which adds a health route and answers every error in OpenAI's shape."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from ray.llm._internal.serve.core.configs.openai_api_models import (
    ChatCompletionRequest,
    CompletionRequest,
    OpenAIHTTPException,
)
from ray.llm._internal.serve.core.ingress.ingress import (
    DEFAULT_ENDPOINTS,
    OpenAiIngress,
    make_fastapi_ingress,
)
from ray.llm._internal.serve.core.ingress.middleware import SetRequestIdMiddleware
from ray.serve.exceptions import BackPressureError

from shardserve.errors import clean_engine_message, describe_validation_errors, openai_error
from shardserve.request_checks import find_invalid_unicode

logger = logging.getLogger(__name__)
HEALTH_TIMEOUT_S = 5.0
RETRY_AFTER_S = 1
JSON_TYPES = ("application/json",)


class ShardserveIngress(OpenAiIngress):
    async def chat(self, body: ChatCompletionRequest, request: Request) -> Response:
        await _check_body(request)
        try:
            return await super().chat(body, request)
        except BackPressureError:
            return _queue_full()

    async def completions(self, body: CompletionRequest, request: Request) -> Response:
        await _check_body(request)
        try:
            return await super().completions(body, request)
        except BackPressureError:
            return _queue_full()

    async def health(self) -> JSONResponse:
        """200 when every model deployment answers its health check, else 503."""
        try:
            await asyncio.wait_for(
                asyncio.gather(*(h.check_health.remote() for h in self._default_serve_handles.values())),
                HEALTH_TIMEOUT_S,
            )
        except Exception as err:  # any failure means "not ready"
            logger.warning("health check failed: %r", err)
            return JSONResponse(openai_error(503, "model replicas are not ready"), status_code=503)
        return JSONResponse({"status": "ok", "models": sorted(self._model_cards)})


async def _check_body(request: Request) -> None:
    problem = find_invalid_unicode(await request.body())
    if problem:
        raise StarletteHTTPException(400, problem)


ENDPOINTS: dict[str, Callable[[FastAPI], Any]] = {
    **DEFAULT_ENDPOINTS,
    "health": lambda app: app.get("/health"),
}


def _error_response(status: int, message: str, param: Any = None, code: Any = None, headers: Any = None) -> JSONResponse:
    return JSONResponse(openai_error(status, message, param=param, code=code), status_code=status, headers=headers)


async def _on_validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
    message, param = describe_validation_errors(list(exc.errors()))
    return _error_response(400, message, param=param)


async def _on_http_exception(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
    code = "model_not_found" if exc.status_code == 404 and "model" in str(exc.detail) else None
    return _error_response(exc.status_code, str(exc.detail), code=code, headers=getattr(exc, "headers", None))


async def _on_openai_exception(_request: Request, exc: OpenAIHTTPException) -> JSONResponse:
    message, param = clean_engine_message(exc.message)
    if exc.status_code >= 500:
        logger.error("request failed: %s", exc.internal_message or exc.message)
    return _error_response(exc.status_code, message, param=param)


def _queue_full() -> JSONResponse:
    # The deployment's queue is full: tell the client at once when to come back.
    # (Caught in the endpoint: Serve replaces any app-level handler for this
    # exception with its own plain-text 503.)
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
    """415 for POSTs to /v1/* whose body is not declared as JSON."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"].startswith("/v1/"):
            content_type = dict(scope["headers"]).get(b"content-type", b"").decode("latin-1")
            if content_type.split(";")[0].strip().lower() not in JSON_TYPES:
                response = _error_response(415, "Content-Type must be application/json", code="unsupported_media_type")
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def build_fastapi_app() -> FastAPI:
    app = FastAPI()
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_exception)
    app.add_exception_handler(OpenAIHTTPException, _on_openai_exception)
    app.add_exception_handler(Exception, _on_unexpected)
    app.add_middleware(JsonBodyOnly)
    app.add_middleware(SetRequestIdMiddleware)
    return app


def make_ingress_class() -> type:
    """The Serve deployment class: routes bound onto a fresh FastAPI app."""
    return make_fastapi_ingress(ShardserveIngress, endpoint_map=ENDPOINTS, app=build_fastapi_app())
