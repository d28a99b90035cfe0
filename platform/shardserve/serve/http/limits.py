"""Checks on a request body before it reaches a replica (pure).

Limits (`find_limit_violation`) bound what one request may ask of the engine:
n, best_of, max_tokens, sampling ranges, logprobs, stop strings, messages
and their roles, tools, and the schemas and grammars that constrain output.

The engine's tokenizer cannot take text that is not valid Unicode and fails
with a server error deep inside the replica; refusing it here is a clear 400.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Optional

from jsonschema import Draft202012Validator, SchemaError
from jsonschema.validators import validator_for

from shardserve.api.chat_spec import OPENAI_CHAT_ROLES

# JSON can smuggle half of a UTF-16 surrogate pair in as an escape; raw
# UTF-8 bytes cannot carry one at all, so bodies without such an escape skip
# the slower full check.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


def find_invalid_unicode(raw_body: bytes) -> Optional[LimitViolation]:
    """The first string (or key) in the JSON body that is not valid Unicode."""
    if not _SURROGATE_ESCAPE.search(raw_body):
        return None
    try:
        decoded = json.loads(raw_body)
    except (ValueError, RecursionError):
        return None  # not JSON: the body parser reports that
    for path, value in walk_json(decoded):
        texts = [(path, value)] if isinstance(value, str) else (
            [(_join(path, key), key) for key in value] if isinstance(value, dict) else [])
        for where, text in texts:
            if not _is_unicode(text):
                return LimitViolation(f"{where or 'body'} contains a lone UTF-16 surrogate (\\ud800-\\udfff escape); "
                                      "text must be valid Unicode", where or None, code=None)
    return None


def _is_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _join(path: str, key: Any) -> str:
    return f"{path}[{key}]" if isinstance(key, int) else f"{path}.{key}" if path else str(key)


def walk_json(value: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """(field path, value) for `value` and everything inside it, depth first, without recursion."""
    stack = [(path, value)]
    while stack:
        path, value = stack.pop()
        yield path, value
        if isinstance(value, dict):
            stack.extend((_join(path, key), child) for key, child in reversed(value.items()))
        elif isinstance(value, list):
            stack.extend((_join(path, i), child) for i, child in reversed(list(enumerate(value))))


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
    max_tools: int = 128
    max_schema_bytes: int = 128 * 1024
    max_schema_depth: int = 32
    chat_roles: tuple[str, ...] = OPENAI_CHAT_ROLES
    vocab_size: Optional[int] = None  # the model's, once its engine runs
    request_timeout_seconds: Optional[float] = None
    # One replica admits this many requests at once (engine slots plus its queue).
    max_ongoing_requests: int = 64
    max_queued_requests: int = 256

    @property
    def max_admitted(self) -> int:
        return self.max_ongoing_requests + self.max_queued_requests

    @classmethod
    def from_spec(cls, serving: Any, chat: Any = None) -> RequestLimits:
        """From a ServingSpec, and the ChatSpec's extra roles if there is one."""
        fields = {f: getattr(serving, f) for f in cls.__dataclass_fields__ if hasattr(serving, f)}
        extra_roles = tuple(chat.extra_roles) if chat is not None else ()
        return cls(**fields, chat_roles=OPENAI_CHAT_ROLES + extra_roles)


@dataclass(frozen=True)
class LimitViolation:
    message: str
    param: Optional[str]
    code: Optional[str] = "limit_exceeded"  # None: a malformed value, not a limit


def _number(value: Any) -> Optional[float]:
    # Wrong types are the schema's to report; bool is not a number here.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        return float(value)
    except OverflowError:  # an int past any float
        return math.inf if value > 0 else -math.inf


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
    return (_check_messages(body, limits) or _check_tools(body, limits) or _check_schemas(body, limits)
            or _check_token_ids(body, limits) or _check_integers(body))


INT64 = (-(2**63), 2**63 - 1)


def _check_integers(body: dict[str, Any]) -> Optional[LimitViolation]:
    """The first integer anywhere in the body past 64 bits: pydantic takes any
    size, and the engine's message encoder fails on it with a server error."""
    for path, value in walk_json(body):
        if isinstance(value, int) and not isinstance(value, bool) and not INT64[0] <= value <= INT64[1]:
            return LimitViolation(f"{path} is out of range: integers must fit in 64 bits", path, code=None)
    return None

def _check_messages(body: dict[str, Any], limits: RequestLimits) -> Optional[LimitViolation]:
    messages = body.get("messages")
    if not isinstance(messages, list):
        return None
    if not messages:
        return LimitViolation("messages must hold at least one message", "messages", code=None)
    if len(messages) > limits.max_messages:
        return LimitViolation(f"messages may hold at most {limits.max_messages} messages, got {len(messages)}",
                              "messages")
    for i, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if isinstance(role, str) and role not in limits.chat_roles:
            return LimitViolation(f"messages[{i}].role must be one of {', '.join(limits.chat_roles)}, got {role!r}",
                                  f"messages[{i}].role", code=None)
        content = message.get("content") if isinstance(message, dict) else None
        # The schema also admits any iterable, which Ray Serve LLM lists later and fails on with a server error.
        if content is not None and not isinstance(content, str) and not (
                isinstance(content, list) and all(isinstance(part, dict) for part in content)):
            return LimitViolation(f"messages[{i}].content must be a string, null or a list of content parts",
                                  f"messages[{i}].content", code=None)
        if _message_chars(message) > limits.max_message_chars:
            return LimitViolation(f"messages[{i}] is longer than {limits.max_message_chars} characters",
                                  f"messages[{i}].content")
    return None


def _check_token_ids(body: dict[str, Any], limits: RequestLimits) -> Optional[LimitViolation]:
    """/detokenize's token ids: vLLM hands them to the tokenizer unchecked,
    which fails on one past 2**32 with a server error."""
    tokens = body.get("tokens")
    if limits.vocab_size is None or not isinstance(tokens, list):
        return None
    for i, token in enumerate(tokens):
        if _number(token) is not None and not 0 <= token < limits.vocab_size:
            return LimitViolation(f"tokens[{i}] is {token}; this model's token ids run from 0 to "
                                  f"{limits.vocab_size - 1}", f"tokens[{i}]", code=None)
    return None


def _check_tools(body: dict[str, Any], limits: RequestLimits) -> Optional[LimitViolation]:
    tools = body.get("tools")
    if isinstance(tools, list) and len(tools) > limits.max_tools:
        return LimitViolation(f"tools may hold at most {limits.max_tools} tools, got {len(tools)}", "tools")
    return None


# structured_outputs' members that each become a grammar (vLLM's StructuredOutputsParams).
_STRUCTURED_OUTPUT_KINDS = ("json", "regex", "choice", "grammar", "structural_tag")


def _schemas(body: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    """(field path, value) for each schema or grammar that constrains the output."""
    tools = body.get("tools")
    if isinstance(tools, list):
        for i, tool in enumerate(tools):
            function = tool.get("function") if isinstance(tool, dict) else None
            if isinstance(function, dict) and function.get("parameters") is not None:
                yield f"tools[{i}].function.parameters", function["parameters"]
    if body.get("response_format") is not None:
        yield "response_format", body["response_format"]
    structured = body.get("structured_outputs")
    if isinstance(structured, dict):
        for kind in _STRUCTURED_OUTPUT_KINDS:
            if structured.get(kind) is not None:
                yield f"structured_outputs.{kind}", structured[kind]


def _json_schemas(body: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    """(field path, schema) for each JSON Schema the output must match."""
    for param, value in _schemas(body):
        if param.startswith("tools[") or param == "structured_outputs.json":
            yield param, value
        elif param == "response_format" and isinstance(value, dict) and isinstance(value.get("json_schema"), dict):
            if "schema" in value["json_schema"]:
                yield "response_format.json_schema.schema", value["json_schema"]["schema"]


def find_schema_error(param: str, schema: Any) -> Optional[LimitViolation]:
    """Where `schema` breaks JSON Schema's own rules (its metaschema, the draft
    it names or 2020-12): the engine's grammar compiler reports these without
    saying where."""
    if not isinstance(schema, dict):
        return None  # true and false are schemas; anything else is the request model's to refuse
    try:
        validator_for(schema, default=Draft202012Validator).check_schema(schema)
    except SchemaError as err:
        where = param
        for key in err.absolute_path:
            where = _join(where, key)
        return LimitViolation(f"{where} is not valid JSON Schema: {err.message}", where, code="invalid_schema")
    return None


def json_depth(value: Any, give_up_past: int) -> int:
    """Nesting depth of objects and arrays (a scalar is 0), counted without
    recursion; stops counting past `give_up_past`."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, (dict, list)):
            depth += 1
            deepest = max(deepest, depth)
            if deepest > give_up_past:
                return deepest
            stack.extend((child, depth) for child in (node.values() if isinstance(node, dict) else node))
    return deepest


def _check_schemas(body: dict[str, Any], limits: RequestLimits) -> Optional[LimitViolation]:
    total = 0
    for param, value in _schemas(body):
        depth = json_depth(value, give_up_past=limits.max_schema_depth)
        if depth > limits.max_schema_depth:
            return LimitViolation(f"{param} is nested deeper than {limits.max_schema_depth} levels", param)
        total += len(value.encode("utf-8") if isinstance(value, str)
                     else json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8", "replace"))
        if total > limits.max_schema_bytes:
            return LimitViolation(
                f"{param}: the request's schemas and grammars (tools' parameters, response_format, "
                f"structured_outputs) add up to more than {limits.max_schema_bytes} bytes", param)
    for param, schema in _json_schemas(body):
        found = find_schema_error(param, schema)
        if found:
            return found
    return None
