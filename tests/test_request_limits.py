"""Request limits (pure): each bound names its parameter; wrong types are left to the schema."""

import pytest

from shardserve.api.spec import ServingSpec
from shardserve.serve.http.limits import RequestLimits, find_limit_violation

LIMITS = RequestLimits(max_tokens=100, max_n=4, max_stop_sequences=2, max_messages=3, max_message_chars=10)


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
])
def test_out_of_bounds_names_the_param(body, param):
    found = find_limit_violation(body, LIMITS)
    assert found is not None and found.param == param, found


@pytest.mark.parametrize("body", [
    {"n": 4, "best_of": 4, "max_tokens": 100, "temperature": 0, "top_p": 1, "logprobs": 5, "stop": ["a", "b"]},
    {"messages": [{"role": "user", "content": "x" * 10}] * 3, "logprobs": True, "top_logprobs": 20},
    {"n": "many", "temperature": None, "stop": None, "messages": "nope", "logprobs": False},  # schema's job
    [],
])
def test_within_bounds_or_wrong_types_pass(body):
    assert find_limit_violation(body, LIMITS) is None


def test_limits_come_from_the_serving_spec():
    serving = ServingSpec.model_validate({"maxN": 2, "maxRequestBytes": 2048, "maxTokens": 64,
                                          "requestTimeoutSeconds": 30})
    limits = RequestLimits.from_serving(serving)
    assert (limits.max_n, limits.max_request_bytes, limits.max_tokens) == (2, 2048, 64)
    assert limits.request_timeout_seconds == 30
    assert RequestLimits.from_serving(ServingSpec()) == RequestLimits(request_timeout_seconds=600)
