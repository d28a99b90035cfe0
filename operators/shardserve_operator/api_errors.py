"""Errors of the Kubernetes API as types, raised once, by the client wrapper (kube.py).

Everything above kube.py catches these classes, never HTTP status numbers
and never the client library's own exception, so the client can be swapped
without touching the rest. Each error keeps the status code, the reason
phrase and the message of the server's Status object, and says what was
being done: kube.py names the request, and a caller that knows better
(apply.py: "create RayService default/tiny") names the step.

  ApiError                any refusal without a class of its own (401, 405, 410, ...)
    ApiTransportError     no HTTP answer: refused, reset, timed out (status 0)
    ApiBadRequest         400, e.g. an unknown field under strict field validation
    ApiForbidden          403
    ApiNotFound           404
    ApiTimeout            408
    ApiConflict           409: a stale resourceVersion, or the name is taken
    ApiInvalid            422, e.g. a failed JSON patch test
    ApiThrottled          429, with the server's Retry-After
    ApiServerError        500 and above
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Optional


class ApiError(Exception):
    """A request the API server refused, or never answered."""

    def __init__(self, status: int, reason: str = "", message: str = "", *, body: str = "",
                 retry_after: Optional[float] = None):
        self.status = status  # the HTTP status; 0 when no answer came
        self.reason = reason  # the HTTP reason phrase ("Conflict")
        self.message = message  # the server's own words (its Status object's message)
        self.body = body
        self.retry_after = retry_after  # seconds the server asked to wait (Retry-After), if it said
        self.action = ""  # what was being done: "create RayService default/tiny"
        super().__init__(status, reason, message)

    def during(self, action: str) -> ApiError:
        """Names what was being done when it failed; returns the error itself, to raise it."""
        self.action = action
        return self

    def describe(self) -> str:
        """'HTTP 409 Conflict: the object has been modified; ...'"""
        return f"HTTP {self.status} {self.reason}".strip() + (f": {self.message}" if self.message else "")

    def __str__(self) -> str:
        return f"{self.action}: {self.describe()}" if self.action else self.describe()


class ApiTransportError(ApiError):
    """No HTTP answer came: connection refused or reset, a timeout, a TLS failure."""

    def __init__(self, message: str):
        super().__init__(0, "", message)

    def describe(self) -> str:
        return f"no answer from the API server: {self.message}"


class ApiBadRequest(ApiError):
    """400: the request itself is wrong (strict field validation names unknown fields here)."""


class ApiForbidden(ApiError):
    """403: RBAC refuses it (also while a fresh install's RBAC is still being set up)."""


class ApiNotFound(ApiError):
    """404: the object (or its kind) does not exist."""


class ApiTimeout(ApiError):
    """408: the server gave up waiting for the request."""


class ApiConflict(ApiError):
    """409: the resourceVersion read is stale, or the name is taken."""


class ApiInvalid(ApiError):
    """422: the object fails validation, or a JSON patch's test failed."""


class ApiThrottled(ApiError):
    """429: too many requests; `retry_after` says how long to wait when the server said."""


class ApiServerError(ApiError):
    """500 and above: the API server (or something behind it, etcd, a webhook) failed."""


_BY_STATUS: dict[int, type[ApiError]] = {
    400: ApiBadRequest,
    403: ApiForbidden,
    404: ApiNotFound,
    408: ApiTimeout,
    409: ApiConflict,
    422: ApiInvalid,
    429: ApiThrottled,
}


def parse_retry_after(value: Optional[str]) -> Optional[float]:
    """Seconds from a Retry-After header; None for its date form or garbage (the backoff applies)."""
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def read_status_message(body: str) -> str:
    """The message of the Status object the API server sends with a refusal; '' when there is none."""
    try:
        status = json.loads(body or "{}")
    except ValueError:
        return ""
    return str(status.get("message") or "") if isinstance(status, dict) else ""


def build_api_error(status: int, reason: str = "", body: str = "",
                    headers: Optional[Mapping[str, str]] = None) -> ApiError:
    """The typed error for an HTTP answer outside 2xx."""
    headers = headers or {}
    cls = ApiServerError if status >= 500 else _BY_STATUS.get(status, ApiError)
    retry_after = parse_retry_after(headers.get("Retry-After") or headers.get("retry-after"))
    return cls(status, reason or "", read_status_message(body), body=body, retry_after=retry_after)
