"""OpenAI-shaped error bodies (pure).

`{"error": {"message", "type", "param", "code"}}` as OpenAI's API and vLLM's
server send them. Messages reaching a client never carry tracebacks,
exception class names or internal request plumbing.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Optional

from starlette.responses import JSONResponse

from shardserve.api.validation import field_path

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    431: "invalid_request_error",
    503: "service_unavailable_error",
    504: "timeout_error",
}
SERVER_ERROR = "server_error"
INTERNAL_MESSAGE = "The server had an error while processing your request."

# Ray Serve LLM wraps engine errors as
# "Message: <user text>, Internal exception: <...>, original exception: <...>".
_WRAPPED = re.compile(r"^Message: (?P<msg>.*?), Internal exception: ", re.S)
_REQUEST_ID = re.compile(r"\s*\(Request ID: [^)]*\)")
# xgrammar's errors carry the time and its own source location:
# "[06:28:19] /project/cpp/json_schema_converter.cc:5082: Type should be a string".
_GRAMMAR_LOCATION = re.compile(r"\[\d\d:\d\d:\d\d\] \S+:\d+: ")
# vLLM's validation errors end with "(parameter=NAME, value=...)".
_PARAMETER = re.compile(r"\s*\(parameter=(?P<param>[A-Za-z_.\[\]0-9]+)(, value=.*)?\)\s*$", re.S)


def error_type_for(status: int) -> str:
    return ERROR_TYPES.get(status, SERVER_ERROR if status >= 500 else "invalid_request_error")


def openai_error(
    status: int,
    message: str,
    *,
    type: Optional[str] = None,
    param: Optional[str] = None,
    code: Optional[str] = None,
) -> dict[str, Any]:
    if status >= 500 and status not in (503, 504):
        message = INTERNAL_MESSAGE  # details stay in the server's log
    return {"error": {"message": message, "type": type or error_type_for(status), "param": param, "code": code}}


def clean_engine_message(raw: str) -> tuple[str, Optional[str]]:
    """User-facing text and parameter name from a wrapped engine error."""
    match = _WRAPPED.match(raw)
    message = match.group("msg") if match else raw
    message = _GRAMMAR_LOCATION.sub("", _REQUEST_ID.sub("", message)).strip()
    param = None
    found = _PARAMETER.search(message)
    if found:
        param = found.group("param")
        message = message[: found.start()].strip()
    return message, param


_BOUND_ERRORS = {"too_long", "too_short", "greater_than", "greater_than_equal", "less_than", "less_than_equal"}
_TYPE_TAGS = {"str", "int", "float", "bool", "dict", "list", "none", "null"}


def _is_type_tag(part: str) -> bool:
    return part[:1].isupper() or "[" in part or "-" in part or part in _TYPE_TAGS


def _field_path(loc: Any) -> Optional[str]:
    """('body', 'messages', 0, 'ChatCompletionUserMessageParam', 'content') -> messages[0].content"""
    # Skip the root and the type names unions add to the location.
    return field_path(loc, skip=lambda part: part == "body" or _is_type_tag(part)) or None


def describe_validation_errors(errors: list[dict[str, Any]]) -> tuple[str, Optional[str]]:
    """Request-body validation errors -> one message and the first bad field."""
    if not errors:
        return "Invalid request body.", None
    if any(err.get("type") == "json_invalid" for err in errors):
        return "request body is not valid JSON", None
    # A union reports one error per member type; the first per field reads best,
    # except that a member whose type matched ("too long") says more than the
    # ones whose type did not ("should be a valid string").
    ranked = sorted(errors, key=lambda err: 0 if err.get("type") in _BOUND_ERRORS else 1)
    by_field: dict[Optional[str], str] = {}
    for err in ranked:
        by_field.setdefault(_field_path(err.get("loc", ())), str(err.get("msg", "invalid")))
    parts = [f"{field}: {msg}" if field else msg for field, msg in list(by_field.items())[:3]]
    return "; ".join(parts), next(iter(by_field))


def error_response(status: int, message: str, param: Optional[str] = None, code: Optional[str] = None,
                   headers: Optional[Mapping[str, str]] = None) -> JSONResponse:
    """An OpenAI-shaped error as an HTTP response."""
    return JSONResponse(openai_error(status, message, param=param, code=code), status_code=status, headers=headers)
