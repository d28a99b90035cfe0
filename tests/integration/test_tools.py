"""Tool calling, structured output and a chat template override, on the real
local stack with the openai client. The tiny model's weights are random, so
only what structured output constrains is asserted on content: arguments and
JSON that validate against their schemas."""

from __future__ import annotations

import json

import jsonschema
import openai
import pytest
from transformers import AutoTokenizer

from shardserve.builtin.tiny import ensure_builtin_model
from tests.integration.conftest import TOOL_CALLING, TOOLS_TEMPLATE
from tests.integration.stack import LocalStack

pytestmark = [pytest.mark.integration, pytest.mark.stacks(TOOL_CALLING)]


# A pattern, not maxLength, bounds the city: xgrammar 0.2.9 compiles a
# length-bounded string to a character class that admits raw control
# characters, and the arguments then do not parse as JSON (docs/serving.md).
WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string", "pattern": "^[A-Za-z ]{1,12}$"}, "unit": {"enum": ["c", "f"]}},
    "required": ["city", "unit"],
    "additionalProperties": False,
}
TIME = {"type": "object", "properties": {"zone": {"enum": ["utc", "cet"]}}, "required": ["zone"],
        "additionalProperties": False}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Weather for a city", "parameters": WEATHER}},
    {"type": "function", "function": {"name": "get_time", "description": "Time in a zone", "parameters": TIME}},
]
SCHEMAS = {"get_weather": WEATHER, "get_time": TIME}
MESSAGES = [{"role": "user", "content": "What is the weather in Paris?"}]
NAMED = {"type": "function", "function": {"name": "get_weather"}}


@pytest.fixture(scope="module")
def stack(tools_stack: LocalStack) -> LocalStack:
    return tools_stack


@pytest.fixture(scope="module")
def client(stack):
    return openai.OpenAI(base_url=f"{stack.base_url}/v1", api_key="unused", max_retries=0, timeout=120)


def check_calls(calls) -> None:
    assert calls, "no tool calls"
    for call in calls:
        assert call.type == "function" and call.id
        jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])


def test_named_tool_choice_returns_arguments_that_match_the_schema(client):
    reply = client.chat.completions.create(model="tiny", messages=MESSAGES, tools=TOOLS, tool_choice=NAMED,
                                           max_tokens=96, temperature=0)
    (call,) = reply.choices[0].message.tool_calls
    assert call.function.name == "get_weather"
    check_calls([call])


def test_named_tool_choice_streams_arguments_that_match_the_schema(client):
    stream = client.chat.completions.create(model="tiny", messages=MESSAGES, tools=TOOLS, tool_choice=NAMED,
                                            max_tokens=96, temperature=0, stream=True)
    names, arguments = set(), ""
    for chunk in stream:
        for choice in chunk.choices:
            for delta in choice.delta.tool_calls or []:
                if delta.function.name:
                    names.add(delta.function.name)
                arguments += delta.function.arguments or ""
    assert names == {"get_weather"}
    jsonschema.validate(json.loads(arguments), WEATHER)


def test_required_tool_choice_calls_a_tool_with_valid_arguments(client):
    reply = client.chat.completions.create(model="tiny", messages=MESSAGES, tools=TOOLS, tool_choice="required",
                                           max_tokens=96, temperature=0, parallel_tool_calls=True)
    check_calls(reply.choices[0].message.tool_calls)


def test_auto_and_none_answer(client):
    """What the random model says under auto is not predictable; both answer, and none never calls."""
    for choice in ("auto", "none"):
        reply = client.chat.completions.create(model="tiny", messages=MESSAGES, tools=TOOLS, tool_choice=choice,
                                               max_tokens=16, temperature=0)
        message = reply.choices[0].message
        assert reply.choices[0].finish_reason in ("stop", "length", "tool_calls")
        if choice == "none":
            assert not message.tool_calls


def test_a_tool_result_continues_the_conversation(client):
    first = client.chat.completions.create(model="tiny", messages=MESSAGES, tools=TOOLS, tool_choice=NAMED,
                                           max_tokens=96, temperature=0)
    (call,) = first.choices[0].message.tool_calls
    follow = [*MESSAGES, {"role": "assistant", "tool_calls": [call.model_dump()]},
              {"role": "tool", "tool_call_id": call.id, "content": "18 C, clear"}]
    reply = client.chat.completions.create(model="tiny", messages=follow, tools=TOOLS, max_tokens=8)
    assert reply.usage.prompt_tokens > first.usage.prompt_tokens


def test_json_schema_response_validates(client):
    schema = {"type": "object", "properties": {"answer": {"enum": ["yes", "no"]},
                                               "score": {"type": "integer", "minimum": 0, "maximum": 9}},
              "required": ["answer", "score"], "additionalProperties": False}
    reply = client.chat.completions.create(
        model="tiny", messages=MESSAGES, max_tokens=64, temperature=0,
        response_format={"type": "json_schema", "json_schema": {"name": "verdict", "schema": schema, "strict": True}})
    jsonschema.validate(json.loads(reply.choices[0].message.content), schema)


def test_json_object_response_is_an_object(client):
    """Any object is allowed, so a random model may still be inside a string at max_tokens."""
    reply = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=64, temperature=0,
                                           response_format={"type": "json_object"})
    choice = reply.choices[0]
    assert choice.message.content.startswith("{")
    if choice.finish_reason == "stop":
        assert isinstance(json.loads(choice.message.content), dict)


def test_the_template_override_is_what_the_engine_sees(client):
    """The prompt tokens are the spec's template rendered, tools listed, tokenised by the model's tokenizer."""
    reply = client.chat.completions.create(model="tiny", messages=MESSAGES, tools=TOOLS, max_tokens=1,
                                           extra_body={"return_token_ids": True})
    prompt_ids = reply.model_extra["prompt_token_ids"]
    tokenizer = AutoTokenizer.from_pretrained(ensure_builtin_model())
    expected = tokenizer.apply_chat_template(MESSAGES, tools=TOOLS, chat_template=TOOLS_TEMPLATE,
                                             add_generation_prompt=True, tokenize=False)
    assert "get_weather: Weather for a city" in expected
    assert prompt_ids == tokenizer(expected, add_special_tokens=False)["input_ids"]
