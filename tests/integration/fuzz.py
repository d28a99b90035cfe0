"""Malformed, odd and schema-valid requests for every POST route, derived
from the app's own OpenAPI document (pure: builds cases, sends nothing).

Each case takes a valid base body and changes one field: set to null, to a
value of every JSON type the field's schema does not admit, out of range,
empty, or absurdly large. The fields are every property the route's schema
declares and every field inside the base bodies (messages[0].role,
tools[0].function.parameters, ...). `check_response` says what is wrong with
an answer, if anything: a 5xx, or a 4xx not in OpenAI's shape.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Optional

MODEL = "tiny"
WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string", "pattern": "^[A-Za-z ]{1,12}$"}, "unit": {"enum": ["c", "f"]}},
    "required": ["city", "unit"],
    "additionalProperties": False,
}
TOOL = {"type": "function", "function": {"name": "get_weather", "description": "Weather", "parameters": WEATHER}}
USER = [{"role": "user", "content": "hi"}]

# route -> (name, valid body) pairs; every generated request is one of these with one field changed.
BASES: dict[str, list[tuple[str, dict[str, Any]]]] = {
    "/v1/chat/completions": [
        ("chat", {"model": MODEL, "messages": USER, "max_tokens": 2, "temperature": 0}),
        ("chat-tools", {"model": MODEL, "messages": USER, "max_tokens": 24, "tools": [TOOL],
                        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
                        "parallel_tool_calls": False}),
        ("chat-json-schema", {"model": MODEL, "messages": USER, "max_tokens": 24,
                              "response_format": {"type": "json_schema",
                                                  "json_schema": {"name": "weather", "schema": WEATHER}}}),
        ("chat-stream", {"model": MODEL, "messages": USER, "max_tokens": 2, "stream": True,
                         "stream_options": {"include_usage": True}, "logprobs": True, "top_logprobs": 2}),
        ("chat-structured", {"model": MODEL, "messages": USER, "max_tokens": 4,
                             "structured_outputs": {"choice": ["yes", "no"]}}),
    ],
    "/v1/completions": [
        ("completion", {"model": MODEL, "prompt": "hi", "max_tokens": 2, "logprobs": 2, "stop": ["."]}),
        ("completion-stream", {"model": MODEL, "prompt": ["a", "b"], "max_tokens": 2, "stream": True, "n": 2}),
    ],
    "/tokenize": [("tokenize", {"model": MODEL, "prompt": "hi"})],
    "/detokenize": [("detokenize", {"model": MODEL, "tokens": [1, 2, 3]})],
    "/v1/embeddings": [("embeddings", {"model": MODEL, "input": "hi"})],
    "/v1/score": [("score", {"model": MODEL, "text_1": "a", "text_2": "b"})],
}

# A sample of each JSON type, for "a type the schema does not admit".
TYPE_SAMPLES: dict[str, Any] = {
    "null": None, "boolean": True, "integer": 7, "number": 1.5, "string": "x", "array": [1], "object": {"a": 1},
}
OUT_OF_RANGE_NUMBERS = (-1, 0, -(2**63), 2**64, 10**400, 1e308, -1e308, float("nan"), float("inf"), 0.5)
ODD_STRINGS = ("", " ", "\x00", "not-a-choice", "\ud800", "😀" * 8, "${{7*7}}{{ 7*7 }}")
# Stands for arrays nested DEEP deep: Python's json cannot write them, so
# `encode` puts them in the bytes.
DEEP = 5000
DEEP_MARK = "\u0000deep\u0000"


def huge_values() -> Iterator[tuple[str, Any]]:
    yield "huge string", "x" * 200_000
    yield "huge array", list(range(50_000))
    yield "huge object", {f"k{i}": i for i in range(20_000)}
    yield f"arrays nested {DEEP} deep", DEEP_MARK


@dataclass(frozen=True)
class Case:
    path: str  # the route
    base: str  # which base body
    field: str  # e.g. messages[0].role
    kind: str  # what was done to it
    body: Any  # the JSON body to send

    @property
    def label(self) -> str:
        return f"{self.base} {self.field} <- {self.kind}"


# ------------------------------------------------------------------ schemas


def resolve(schema: dict[str, Any], components: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = components[schema["$ref"].rsplit("/", 1)[-1]]
    return schema


def admitted_types(schema: dict[str, Any], components: dict[str, Any], seen: int = 0) -> set[str]:
    """The JSON types a value of `schema` may have (all of them when it says nothing)."""
    schema = resolve(schema, components)
    options = schema.get("anyOf") or schema.get("oneOf") or schema.get("allOf")
    if options and seen < 20:
        return set().union(*(admitted_types(option, components, seen + 1) for option in options))
    if "const" in schema or "enum" in schema:
        values = [schema["const"]] if "const" in schema else schema["enum"]
        return {json_type(value) for value in values}
    declared = schema.get("type")
    if declared is None:
        return set(TYPE_SAMPLES) if "properties" not in schema else {"object"}
    types = {declared} if isinstance(declared, str) else set(declared)
    return types | ({"integer"} if "number" in types else set())


def json_type(value: Any) -> str:
    for name, kind in (("null", type(None)), ("boolean", bool), ("integer", int), ("number", float), ("string", str),
                       ("array", list), ("object", dict)):
        if isinstance(value, kind):
            return name
    raise TypeError(type(value))


def body_schema(openapi: dict[str, Any], path: str) -> Optional[dict[str, Any]]:
    operation = openapi["paths"].get(path, {}).get("post", {})
    schema = operation.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
    return resolve(schema, openapi["components"]["schemas"]) if schema else None


def schema_values(schema: dict[str, Any], components: dict[str, Any], depth: int = 0) -> Any:
    """A hypothesis strategy for values `schema` admits: the keywords pydantic's
    OpenAPI document uses (type, anyOf, enum, const, $ref, bounds, items,
    properties). Past a few levels of nesting, only scalars."""
    from hypothesis import strategies as st

    schema = resolve(schema, components)
    options = schema.get("anyOf") or schema.get("oneOf")
    if options:
        return st.one_of([schema_values(option, components, depth + 1) for option in options])
    if "const" in schema:
        return st.just(schema["const"])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    kind = schema.get("type")
    if kind == "null":
        return st.none()
    if kind == "boolean":
        return st.booleans()
    if kind == "integer":
        return st.integers(schema.get("minimum"), schema.get("maximum"))
    if kind == "number":
        return st.floats(schema.get("minimum"), schema.get("maximum"), allow_nan=False)
    if kind == "string":
        return st.text(min_size=schema.get("minLength", 0), max_size=min(schema.get("maxLength", 40), 40))
    if depth > 4:
        return st.none()
    if kind == "array":
        items = schema_values(schema.get("items", {}), components, depth + 1)
        return st.lists(items, min_size=schema.get("minItems", 0), max_size=4)
    if kind == "object" or "properties" in schema:
        properties = schema.get("properties", {})
        required = [name for name in schema.get("required", []) if name in properties]
        return st.fixed_dictionaries(
            {name: schema_values(properties[name], components, depth + 1) for name in required},
            optional={name: schema_values(sub, components, depth + 1)
                      for name, sub in properties.items() if name not in required})
    return st.none() | st.booleans() | st.integers() | st.text(max_size=20)


# ------------------------------------------------------------------ fields


def fields_of(value: Any, prefix: str = "") -> Iterator[tuple[str, tuple[Any, ...]]]:
    """(display path, key path) for every field inside `value`."""
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in items:
        shown = f"{prefix}[{key}]" if isinstance(key, int) else f"{prefix}.{key}" if prefix else key
        yield shown, (key,)
        for inner_shown, inner_keys in fields_of(child, shown):
            yield inner_shown, (key, *inner_keys)


def with_field(body: dict[str, Any], keys: tuple[Any, ...], value: Any) -> dict[str, Any]:
    changed = copy.deepcopy(body)
    target: Any = changed
    for key in keys[:-1]:
        target = target[key]
    target[keys[-1]] = value
    return changed


def mutations(types: set[str]) -> Iterator[tuple[str, Any]]:
    yield "null", None
    for name, sample in TYPE_SAMPLES.items():
        if name not in types and not (name == "integer" and "number" in types):
            yield f"wrong type {name}", sample
    if types & {"integer", "number"}:
        for number in OUT_OF_RANGE_NUMBERS:
            yield f"number {number!r}"[:40], number
    if "string" in types:
        for text in ODD_STRINGS:
            yield f"string {text!r}"[:40], text
    if "array" in types:
        yield "empty array", []
    if "object" in types:
        yield "empty object", {}
    yield from huge_values()


def build_cases(openapi: dict[str, Any]) -> list[Case]:
    """One case per (base body, field, mutation): the deterministic part of the fuzzing."""
    components = openapi["components"]["schemas"]
    cases: list[Case] = []
    for path, bases in BASES.items():
        schema = body_schema(openapi, path) or {}
        declared = schema.get("properties", {})
        done: set[str] = set()  # each field once per route, in the first base that holds it
        for i, (base_name, base) in enumerate(bases):
            fields = {name: (name,) for name in declared} if i == 0 else {}
            fields.update({shown: keys for shown, keys in fields_of(base)})
            for shown, keys in fields.items():
                if shown in done:
                    continue
                done.add(shown)
                field_schema = declared.get(shown) if len(keys) == 1 else None
                types = admitted_types(field_schema, components) if field_schema else {json_type(_get(base, keys))}
                for kind, value in mutations(types):
                    cases.append(Case(path, base_name, shown, kind, with_field(base, keys, value)))
    return cases


def _get(body: Any, keys: tuple[Any, ...]) -> Any:
    for key in keys:
        body = body[key]
    return body


RAW_BODIES = (b"", b"null", b"[]", b'"text"', b"7", b'{"model": ', b"\xff\xfe{}", b'{"model": "tiny"}' * 2,
              b'{"model": "tiny", "prompt": NaN, "messages": Infinity}')


def encode(body: Any) -> bytes:
    """JSON as Python writes it: NaN and Infinity go out as the bare words."""
    if isinstance(body, bytes):
        return body
    return json.dumps(body).encode().replace(json.dumps(DEEP_MARK).encode(), b"[" * DEEP + b"]" * DEEP)


# ------------------------------------------------------------------ answers


def check_response(status: int, content: bytes, streamed: bool) -> Optional[str]:
    """What is wrong with an answer, or None."""
    if status >= 500:
        return f"HTTP {status}: {content[:300]!r}"
    if status >= 400:
        try:
            error = json.loads(content)["error"]
        except (ValueError, KeyError, TypeError):
            return f"HTTP {status} without an OpenAI error body: {content[:300]!r}"
        if not isinstance(error.get("message"), str) or not error["message"] or not isinstance(error.get("type"), str):
            return f"HTTP {status} error without a message and type: {error!r}"
        if "Traceback" in error["message"] or "File \"" in error["message"]:
            return f"HTTP {status} error carries a traceback: {error['message'][:300]!r}"
        return None
    if streamed:
        for line in content.decode("utf-8", "replace").splitlines():
            if line.startswith("data: {") and '"error"' in line:
                event = json.loads(line[len("data: "):])
                code = (event.get("error") or {}).get("code")
                if isinstance(code, int) and code >= 500:
                    return f"stream carried a server error: {line[:300]!r}"
    return None
