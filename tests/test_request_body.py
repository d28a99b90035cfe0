"""A body vLLM's request models crash on, or refuse with their own error
type, is a 400 naming the field, never a 500 (body.py)."""

import pytest
from fastapi.testclient import TestClient
from ray.llm._internal.serve.core.configs.openai_api_models import ChatCompletionRequest, ModelCard

from shardserve.serve.http.body import find_wrong_field
from shardserve.serve.http.ingress import build_ingress_app

USER = [{"role": "user", "content": "hi"}]
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]


@pytest.fixture(scope="module")
def client() -> TestClient:
    card = ModelCard(id="m", object="model", owned_by="me", permission=[], metadata={})
    # No replica method runs: every body here fails while it is parsed.
    return TestClient(build_ingress_app(object(), "m", card))


@pytest.mark.parametrize("changes, param, words", [
    # vLLM's validators index these before pydantic checks their types: a TypeError or KeyError.
    ({"tool_choice": ["get_weather"], "tools": TOOLS}, "tool_choice", "valid"),
    ({"tool_choice": {"type": "function", "function": {}}, "tools": TOOLS}, "tool_choice.function.name", "name"),
    ({"structured_outputs": "json"}, "structured_outputs", "dictionary"),
    # vLLM's own rejections, which are not ValueErrors.
    ({"top_logprobs": 2}, "top_logprobs", "logprobs"),
    ({"stream_options": {"include_usage": True}}, "stream_options", "stream"),
    ({"tool_choice": "required"}, "tool_choice", "tools"),
])
def test_a_body_vllm_crashes_on_or_refuses_is_a_400_naming_the_field(client, changes, param, words):
    response = client.post("/v1/chat/completions", json={"model": "m", "messages": USER, **changes})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["type"], error["param"]) == ("invalid_request_error", param)
    assert words in error["message"] and "Traceback" not in error["message"]


def test_the_wrong_field_is_found_by_checking_each_alone():
    found = find_wrong_field(ChatCompletionRequest, {"messages": USER, "tool_choice": 5, "n": 2})
    assert found is not None and found[1] == "tool_choice"
    assert find_wrong_field(ChatCompletionRequest, {"messages": USER, "n": 2}) is None
    assert find_wrong_field(ChatCompletionRequest, ["not", "an", "object"]) is None
