"""The tiny model served by `shardserve run` (real Ray, real vLLM on CPU),
driven with the official openai client."""

import httpx
import openai
import pytest

from tests.integration.conftest import greedy_tokens

pytestmark = [pytest.mark.integration, pytest.mark.stacks("tiny")]

MODEL = "tiny"


@pytest.fixture(scope="module")
def client(tiny_stack):
    return openai.OpenAI(base_url=f"{tiny_stack.base_url}/v1", api_key="unused", max_retries=0, timeout=60)


def test_ready_message_names_the_endpoint(tiny_stack):
    assert f"OpenAI endpoint http://127.0.0.1:{tiny_stack.port}/v1" in tiny_stack.log()


def test_model_list(client):
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL]


def test_chat_completion(client):
    reply = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Say hello"}], max_tokens=8, temperature=0
    )
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage.completion_tokens == 8
    assert reply.usage.prompt_tokens > 0
    assert isinstance(reply.choices[0].message.content, str) and reply.choices[0].message.content


def test_completion_is_greedy_deterministic(client):
    first = client.completions.create(model=MODEL, prompt="The river", max_tokens=12, temperature=0)
    second = client.completions.create(model=MODEL, prompt="The river", max_tokens=12, temperature=0)
    assert first.choices[0].text == second.choices[0].text
    assert first.usage.completion_tokens == 12


def test_streaming_chat_with_usage(client):
    stream = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Count"}], max_tokens=10, temperature=0,
        stream=True, stream_options={"include_usage": True},
    )
    chunks = list(stream)
    content_chunks = [c for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(content_chunks) >= 2, "tokens arrive as separate chunks"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 10
    assert any(c.choices and c.choices[0].finish_reason == "length" for c in chunks)


def test_streaming_completion_matches_non_streaming(client):
    whole = client.completions.create(model=MODEL, prompt="Once upon", max_tokens=10, temperature=0)
    pieces = client.completions.create(model=MODEL, prompt="Once upon", max_tokens=10, temperature=0, stream=True)
    assert "".join(c.choices[0].text for c in pieces if c.choices) == whole.choices[0].text


def test_unknown_model_is_404(client):
    with pytest.raises(openai.NotFoundError) as caught:
        client.completions.create(model="no-such-model", prompt="hi", max_tokens=4)
    assert caught.value.body["code"] == "model_not_found"


def test_prompt_plus_max_tokens_beyond_context_is_400(client):
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model=MODEL, prompt="hi", max_tokens=1000)
    error = caught.value.body
    assert "256" in error["message"] and error["param"] == "max_tokens"
    assert "Internal exception" not in error["message"] and "Request ID" not in error["message"]


def test_prompt_longer_than_context_is_400(client):
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model=MODEL, prompt="word " * 400, max_tokens=4)


@pytest.mark.parametrize(
    "content_type, body, status, fragment",
    [
        ("application/json", b'{"model": "tiny", "prompt": ', 400, "not valid JSON"),
        ("application/json", b'{"model": "tiny", "prompt": "hi", "max_tokens": "many"}', 400, "max_tokens"),
        ("application/json", b'{"model": "tiny", "messages": "not a list"}', 400, "messages"),
        ("text/plain", b"hello", 415, "application/json"),
        ("application/json", b'{"model": "tiny", "prompt": "\\ud800", "max_tokens": 2}', 400, "surrogate"),
    ],
)
def test_malformed_requests_get_openai_errors(tiny_stack, content_type, body, status, fragment):
    path = "/v1/chat/completions" if b"messages" in body else "/v1/completions"
    response = httpx.post(f"{tiny_stack.base_url}{path}", content=body, headers={"content-type": content_type}, timeout=30)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert fragment in error["message"]
    assert "Traceback" not in response.text


def test_server_stays_healthy_after_errors(tiny_stack, client):
    assert httpx.get(f"{tiny_stack.base_url}/health", timeout=10).json()["status"] == "ok"
    reply = client.completions.create(model=MODEL, prompt="still here", max_tokens=4, temperature=0)
    assert reply.usage.completion_tokens == 4


def test_greedy_token_ids_are_returned_and_repeat(tiny_stack, single_worker_tokens):
    # single_worker_tokens: read from this stack, once; test_parallel compares its layouts with them.
    assert greedy_tokens(tiny_stack) == single_worker_tokens



def test_model_list_says_what_the_model_does(tiny_stack):
    card = httpx.get(f"{tiny_stack.base_url}/v1/models/{MODEL}", timeout=30).json()
    assert card["metadata"]["tasks"] == ["generate"]
    assert card["metadata"]["endpoints"] == ["/v1/completions", "/v1/chat/completions", "/tokenize", "/detokenize"]


def test_embeddings_and_scores_are_404s_that_say_why(client, tiny_stack):
    with pytest.raises(openai.NotFoundError) as caught:
        client.embeddings.create(model=MODEL, input="hi")
    assert caught.value.body["code"] == "unsupported_endpoint"
    assert "tasks are generate" in caught.value.body["message"]
    score = httpx.post(f"{tiny_stack.base_url}/v1/score", json={"model": MODEL, "text_1": "a", "text_2": "b"}, timeout=30)
    assert score.status_code == 404 and score.json()["error"]["code"] == "unsupported_endpoint"


def test_tokenize_and_detokenize_round_trip(tiny_stack):
    tokens = httpx.post(f"{tiny_stack.base_url}/tokenize", json={"model": MODEL, "prompt": "The river"}, timeout=30)
    assert tokens.status_code == 200, tokens.text
    ids = tokens.json()["tokens"]
    assert tokens.json()["count"] == len(ids) > 0
    text = httpx.post(f"{tiny_stack.base_url}/detokenize", json={"model": MODEL, "tokens": ids}, timeout=30)
    assert text.status_code == 200 and text.json()["prompt"].strip().endswith("The river")
    wrong = httpx.post(f"{tiny_stack.base_url}/tokenize", json={"model": MODEL, "prompt": 7}, timeout=30)
    assert wrong.status_code == 400 and wrong.json()["error"]["param"] == "prompt"
