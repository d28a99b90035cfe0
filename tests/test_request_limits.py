"""Request limits (pure): each bound names its parameter; wrong types are left to the schema."""

import pytest

from shardserve.api.chat_spec import OPENAI_CHAT_ROLES, ChatSpec
from shardserve.api.spec import ServingSpec
from shardserve.serve.http.limits import RequestLimits, find_limit_violation, json_depth

LIMITS = RequestLimits(max_tokens=100, max_n=4, max_stop_sequences=2, max_messages=3, max_message_chars=10,
                       max_tools=2, max_schema_bytes=200, max_schema_depth=6)


def tool(name, parameters):
    return {"type": "function", "function": {"name": name, "parameters": parameters}}


def nested(levels):
    """A schema with `levels` objects inside each other: depth 2 * levels + 1."""
    schema = {"type": "string"}
    for _ in range(levels):
        schema = {"type": "object", "properties": {"a": schema}}
    return schema


@pytest.mark.parametrize("body, param", [
    ({"n": 5}, "n"),
    ({"n": 0}, "n"),
    ({"best_of": 10}, "best_of"),
    ({"max_tokens": 101}, "max_tokens"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_completion_tokens": 1000}, "max_completion_tokens"),
    ({"temperature": 2.5}, "temperature"),
    ({"temperature": -1}, "temperature"),
    ({"top_p": 1.5}, "top_p"),
    ({"logprobs": 21}, "logprobs"),
    ({"top_logprobs": 50}, "top_logprobs"),
    ({"stop": ["a", "b", "c"]}, "stop"),
    ({"stop": ["x" * 2000]}, "stop[0]"),
    ({"stop": "x" * 2000}, "stop[0]"),
    ({"messages": [{"role": "user", "content": "hi"}] * 4}, "messages"),
    ({"messages": [{"role": "user", "content": "x" * 11}]}, "messages[0].content"),
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": "x" * 6}] * 2}]}, "messages[0].content"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "wizard", "content": "b"}]}, "messages[1].role"),
    ({"tools": [tool("a", {}), tool("b", {}), tool("c", {})]}, "tools"),
    ({"tools": [tool("a", {}), tool("b", nested(3))]}, "tools[1].function.parameters"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": nested(2)}}},
     "response_format"),
    ({"tools": [tool("a", {"description": "d" * 150})], "response_format": {"type": "json_object", "x": "y" * 60}},
     "response_format"),
    ({"structured_outputs": {"regex": "a" * 201}}, "structured_outputs.regex"),
    ({"structured_outputs": {"json": {"enum": [[[[[[["deep"]]]]]]]}}}, "structured_outputs.json"),
    ({"structured_outputs": {"choice": ["c" * 100, "d" * 100]}}, "structured_outputs.choice"),
])
def test_out_of_bounds_names_the_param(body, param):
    found = find_limit_violation(body, LIMITS)
    assert found is not None and found.param == param, found


@pytest.mark.parametrize("body", [
    {"n": 4, "best_of": 4, "max_tokens": 100, "temperature": 0, "top_p": 1, "logprobs": 5, "stop": ["a", "b"]},
    {"messages": [{"role": "user", "content": "x" * 10}] * 3, "logprobs": True, "top_logprobs": 20},
    {"n": "many", "temperature": None, "stop": None, "messages": "nope", "logprobs": False},  # schema's job
    {"messages": [{"role": role, "content": "x"} for role in ("system", "developer", "user")]},
    {"messages": [{"role": role, "content": "x"} for role in ("assistant", "tool", "function")]},
    {"messages": [{"role": 7}, "not a message"], "tools": "nope", "structured_outputs": [1]},  # schema's job
    {"tools": [tool("a", nested(2)), tool("b", None)], "structured_outputs": {"regex": "[a-z]+", "json": None}},
    [],
])
def test_within_bounds_or_wrong_types_pass(body):
    assert find_limit_violation(body, LIMITS) is None


def test_limits_come_from_the_serving_and_chat_specs():
    serving = ServingSpec.model_validate({"maxN": 2, "maxRequestBytes": 2048, "maxTokens": 64,
                                          "requestTimeoutSeconds": 30, "maxTools": 5, "maxSchemaDepth": 9})
    limits = RequestLimits.from_spec(serving, ChatSpec.model_validate({"extraRoles": ["ipython"]}))
    assert (limits.max_n, limits.max_request_bytes, limits.max_tokens) == (2, 2048, 64)
    assert (limits.request_timeout_seconds, limits.max_tools, limits.max_schema_depth) == (30, 5, 9)
    assert limits.chat_roles == (*OPENAI_CHAT_ROLES, "ipython")
    assert RequestLimits.from_spec(ServingSpec()) == RequestLimits(request_timeout_seconds=600)


def test_an_extra_role_is_accepted_only_when_the_spec_names_it():
    body = {"messages": [{"role": "ipython", "content": "42"}]}
    assert find_limit_violation(body, RequestLimits()).param == "messages[0].role"
    with_role = RequestLimits.from_spec(ServingSpec(), ChatSpec.model_validate({"extraRoles": ["ipython"]}))
    assert find_limit_violation(body, with_role) is None


def test_depth_counts_objects_and_arrays_without_recursing():
    assert [json_depth(v, 100) for v in ("s", {}, [[]], nested(3))] == [0, 1, 2, 7]
    very_deep: list = []
    for _ in range(100_000):
        very_deep = [very_deep]
    assert json_depth(very_deep, give_up_past=10) == 11


def test_token_ids_to_detokenize_stay_in_the_models_vocabulary():
    limits = RequestLimits(vocab_size=100)
    assert find_limit_violation({"tokens": [0, 99]}, limits) is None
    assert find_limit_violation({"tokens": [1, 2**40]}, limits).param == "tokens[1]"
    assert find_limit_violation({"tokens": [-1]}, limits).param == "tokens[0]"
    assert find_limit_violation({"tokens": [2**40]}, RequestLimits()) is None  # vocabulary not known yet
    assert find_limit_violation({"tokens": ["a", None]}, limits) is None  # the schema's job


@pytest.mark.parametrize("body, param", [
    ({"seed": 2**64}, "seed"),
    ({"max_tokens": 10**400}, "max_tokens"),
    ({"logit_bias": {"5": -(2**63) - 1}}, "logit_bias.5"),
    ({"prompt": [[1, 2], [3, 2**70]]}, "prompt[1][1]"),
])
def test_integers_past_64_bits_are_refused_where_they_are(body, param):
    assert find_limit_violation(body, RequestLimits()).param == param


@pytest.mark.parametrize("content", [5, True, {"type": "text"}, [1, 2], ["text"]])
def test_message_content_is_a_string_null_or_parts(content):
    body = {"messages": [{"role": "user", "content": content}]}
    assert find_limit_violation(body, RequestLimits()).param == "messages[0].content"


@pytest.mark.parametrize("body, param", [
    ({"tools": [tool("a", {"type": 5})]}, "tools[0].function.parameters.type"),
    ({"tools": [tool("a", {"properties": {"city": {"type": "strnig"}}})]}, "tools[0].function.parameters.properties.city.type"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"required": "city"}}}},
     "response_format.json_schema.schema.required"),
    ({"structured_outputs": {"json": {"minLength": -1}}}, "structured_outputs.json.minLength"),
])
def test_a_schema_that_breaks_json_schemas_rules_is_refused_where_it_breaks_them(body, param):
    found = find_limit_violation(body, RequestLimits())
    assert (found.param, found.code) == (param, "invalid_schema")
    assert "not valid JSON Schema" in found.message


def test_valid_schemas_and_an_empty_conversation():
    weather = {"type": "object", "properties": {"city": {"type": "string", "pattern": "^[a-z]+$"}}, "required": ["city"]}
    assert find_limit_violation({"tools": [tool("a", weather)], "structured_outputs": {"json": True}}, RequestLimits()) is None
    assert find_limit_violation({"messages": []}, RequestLimits()).param == "messages"
