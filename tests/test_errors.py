"""OpenAI-shaped errors and request body checks."""

import pytest

from shardserve.serve.http.errors import clean_engine_message, describe_validation_errors, openai_error
from shardserve.serve.http.limits import find_invalid_unicode


def test_error_shape():
    assert openai_error(404, "no such model", code="model_not_found") == {
        "error": {"message": "no such model", "type": "not_found_error", "param": None, "code": "model_not_found"}
    }


def test_server_errors_hide_details():
    body = openai_error(500, "KeyError: 'x' at replica.py:12")
    assert body["error"]["type"] == "server_error"
    assert "KeyError" not in body["error"]["message"]


def test_wrapped_engine_message_is_cleaned():
    raw = (
        "Message: max_tokens=800 cannot be greater than max_model_len=max_total_tokens=256. Please request fewer "
        "output tokens. (parameter=max_tokens, value=800) (Request ID: 0fba), Internal exception: "
        "ray.llm._internal.serve.core.configs.openai_api_models.OpenAIHTTPException (Request ID: 0fba), original exception: "
    )
    message, param = clean_engine_message(raw)
    assert message == ("max_tokens=800 cannot be greater than max_model_len=max_total_tokens=256. "
                       "Please request fewer output tokens.")
    assert param == "max_tokens"


def test_validation_errors_name_the_field_once():
    errors = [
        {"type": "string_type", "loc": ("body", "messages", 0, "ChatCompletionUserMessageParam", "content", "str"),
         "msg": "Input should be a valid string"},
        {"type": "list_type", "loc": ("body", "messages", 0, "ChatCompletionUserMessageParam", "content", "list[...]"),
         "msg": "Input should be a valid list"},
        {"type": "int_parsing", "loc": ("body", "max_tokens"), "msg": "Input should be a valid integer"},
    ]
    message, param = describe_validation_errors(errors)
    assert message == "messages[0].content: Input should be a valid string; max_tokens: Input should be a valid integer"
    assert param == "messages[0].content"


def test_invalid_json_message():
    assert describe_validation_errors([{"type": "json_invalid", "loc": ("body", 3), "msg": "JSON decode error"}]) == (
        "request body is not valid JSON", None)


@pytest.mark.parametrize(
    "body, bad",
    [
        (b'{"prompt": "\\ud800"}', True),
        (b'{"prompt": "x\\uDFFFy"}', True),
        (b'{"prompt": "\\ud83d\\ude00"}', False),  # a whole pair: an emoji
        ('{"prompt": "caf\u00e9 \U0001F600"}'.encode(), False),
        (b'{"prompt": "plain"}', False),
        (b'not json \\ud800', False),  # the JSON parser reports this one
    ],
)
def test_lone_surrogates(body, bad):
    assert (find_invalid_unicode(body) is not None) == bad


def test_a_union_member_over_its_bound_is_reported_over_the_type_mismatch():
    errors = [
        {"type": "string_type", "loc": ("body", "stop", "str"), "msg": "Input should be a valid string"},
        {"type": "too_long", "loc": ("body", "stop", "list[str]"),
         "msg": "List should have at most 4 items after validation, not 10"},
    ]
    message, param = describe_validation_errors(errors)
    assert param == "stop" and "at most 4 items" in message


@pytest.mark.parametrize("body, param", [
    (b'{"messages": [{"role": "user", "content": "a\\ud800"}]}', "messages[0].content"),
    (b'{"logit_bias": {"\\udc00": 1}}', "logit_bias.\udc00"),
    (b'"\\ud800"', None),
])
def test_a_lone_surrogate_is_reported_where_it_is(body, param):
    assert find_invalid_unicode(body).param == param


def test_the_grammar_compilers_time_and_source_location_are_dropped():
    raw = ("Failed to transform json schema into a grammar: [06:28:19] /project/cpp/json_schema_converter.cc:5082: "
           "Unsupported type \"strnig\"")
    assert clean_engine_message(raw) == ('Failed to transform json schema into a grammar: Unsupported type "strnig"', None)
