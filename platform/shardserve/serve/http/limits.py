"""Checks on a request body before it reaches a replica (pure).

Limits (`find_limit_violation`) bound what one request may ask of the engine:
n, best_of, max_tokens, sampling ranges, logprobs, stop strings, messages.

The engine's tokenizer cannot take text that is not valid Unicode and fails
with a server error deep inside the replica; refusing it here is a clear 400.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Optional

# JSON can smuggle half of a UTF-16 surrogate pair in as an escape; raw
# UTF-8 bytes cannot carry one at all, so bodies without such an escape skip
# the slower full check.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


def find_invalid_unicode(raw_body: bytes) -> Optional[str]:
    """A message when some string in the JSON body is not valid Unicode."""
    if not _SURROGATE_ESCAPE.search(raw_body):
        return None
    try:
        decoded = json.loads(raw_body)
        json.dumps(decoded, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return "request contains a lone UTF-16 surrogate (\\ud800-\\udfff escape); text must be valid Unicode"
    except ValueError:
        return None  # not JSON: the body parser reports that
    return None


# ---------------------------------------------------------------- limits

# Fixed bounds, as OpenAI documents them; the tunable ones live on ServingSpec.
TEMPERATURE_RANGE = (0.0, 2.0)
TOP_P_RANGE = (0.0, 1.0)
MAX_LOGPROBS = 20
MAX_STOP_CHARS = 1024


@dataclass(frozen=True)
class RequestLimits:
    max_request_bytes: int = 4 * 1024 * 1024
    max_tokens: Optional[int] = None
    max_n: int = 8
    max_stop_sequences: int = 4
    max_messages: int = 512
    max_message_chars: int = 1_000_000
    request_timeout_seconds: Optional[float] = None
    # One replica admits this many requests at once (engine slots plus its queue).
    max_ongoing_requests: int = 64
    max_queued_requests: int = 256

    @property
    def max_admitted(self) -> int:
        return self.max_ongoing_requests + self.max_queued_requests

    @classmethod
    def from_serving(cls, serving: Any) -> RequestLimits:
        return cls(**{f: getattr(serving, f) for f in cls.__dataclass_fields__})


@dataclass(frozen=True)
class LimitViolation:
    message: str
    param: str


def _number(value: Any) -> Optional[float]:
    # Wrong types are the schema's to report; bool is not a number here.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _message_chars(message: Any) -> int:
    content = message.get("content") if isinstance(message, dict) else None
    if isinstance(content, str):
        return len(content)
    if isinstance(content, list):
        return sum(len(part.get("text") or "") for part in content
                   if isinstance(part, dict) and isinstance(part.get("text"), str))
    return 0


def _check_range(body: dict[str, Any], param: str, low: float, high: float) -> Optional[LimitViolation]:
    value = _number(body.get(param))
    if value is not None and not low <= value <= high:
        return LimitViolation(f"{param} must be between {low:g} and {high:g}, got {value:g}", param)
    return None


def _check_max(body: dict[str, Any], param: str, high: int, low: int = 0) -> Optional[LimitViolation]:
    value = _number(body.get(param))
    if value is not None and not low <= value <= high:
        return LimitViolation(f"{param} must be between {low} and {high}, got {value:g}", param)
    return None


def find_limit_violation(body: Any, limits: RequestLimits) -> Optional[LimitViolation]:
    """The first parameter of a completion or chat body beyond the limits, else None."""
    if not isinstance(body, dict):
        return None
    max_tokens = limits.max_tokens if limits.max_tokens is not None else 2**31 - 1
    checks: list[Callable[[], Optional[LimitViolation]]] = [
        lambda: _check_max(body, "n", limits.max_n, low=1),
        lambda: _check_max(body, "best_of", limits.max_n, low=1),
        lambda: _check_range(body, "temperature", *TEMPERATURE_RANGE),
        lambda: _check_range(body, "top_p", *TOP_P_RANGE),
        lambda: _check_max(body, "top_logprobs", MAX_LOGPROBS),
        # Chat's logprobs is a bool; completions' is a count.
        lambda: _check_max(body, "logprobs", MAX_LOGPROBS),
        lambda: _check_max(body, "max_tokens", max_tokens, low=1),
        lambda: _check_max(body, "max_completion_tokens", max_tokens, low=1),
    ]
    for check in checks:
        found = check()
        if found:
            return found
    stop = body.get("stop")
    stops = [stop] if isinstance(stop, str) else stop if isinstance(stop, list) else []
    if len(stops) > limits.max_stop_sequences:
        return LimitViolation(f"stop may hold at most {limits.max_stop_sequences} sequences, got {len(stops)}", "stop")
    for i, item in enumerate(stops):
        if isinstance(item, str) and len(item) > MAX_STOP_CHARS:
            return LimitViolation(f"stop[{i}] is longer than {MAX_STOP_CHARS} characters", f"stop[{i}]")
    messages = body.get("messages")
    if isinstance(messages, list):
        if len(messages) > limits.max_messages:
            return LimitViolation(f"messages may hold at most {limits.max_messages} messages, got {len(messages)}",
                                  "messages")
        for i, message in enumerate(messages):
            if _message_chars(message) > limits.max_message_chars:
                return LimitViolation(f"messages[{i}] is longer than {limits.max_message_chars} characters",
                                      f"messages[{i}].content")
    return None
