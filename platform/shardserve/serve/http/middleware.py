"""The ASGI middleware every request of the replica's HTTP app passes before
a route: header and body size, API keys (and the key's tenant), admission,
content type. Each answers its refusals in OpenAI's error shape."""

from __future__ import annotations

import logging
from typing import Optional

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shardserve.serve.http.api_keys import KeyStore, bearer_token, keys_configured, match_key
from shardserve.serve.http.errors import error_response
from shardserve.serve.telemetry.metrics import record_rejected
from shardserve.serve.tenants.admission import TENANT_STATE

logger = logging.getLogger(__name__)
RETRY_AFTER_S = 1
JSON_TYPES = ("application/json",)
FORM_TYPES = ("multipart/form-data",)
FORM_PATH_PREFIX = "/v1/audio/"


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
    return error_response(
        429,
        f"the model's queue is full; retry after {RETRY_AFTER_S}s",
        code="queue_full",
        headers={"Retry-After": str(RETRY_AFTER_S)},
    )




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
                response = error_response(415, f"Content-Type must be {' or '.join(wanted)}",
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
            response = error_response(431, f"request headers are larger than {self.max_bytes} bytes",
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
        response = error_response(
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
                response = error_response(401, message, code="invalid_api_key",
                                           headers={"WWW-Authenticate": "Bearer"})
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
