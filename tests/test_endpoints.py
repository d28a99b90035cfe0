"""The routes a replica serves, by its model's tasks: served ones pass the
same guards as chat, the others answer 404 before reading the body."""

import asyncio
import json

import pytest
from fastapi.testclient import TestClient
from ray.llm._internal.serve.core.configs.openai_api_models import ModelCard, TokenizeResponse

from shardserve.serve.http.endpoints import ENDPOINTS, served_paths
from shardserve.serve.http.ingress import build_ingress_app
from shardserve.serve.http.limits import RequestLimits

GENERATE = ("generate",)
EMBED = ("embed",)


def test_a_generative_model_serves_completions_chat_and_the_tokenizer():
    assert served_paths(GENERATE) == ["/v1/completions", "/v1/chat/completions", "/tokenize", "/detokenize"]


def test_an_embedding_model_serves_embeddings_scores_and_the_tokenizer():
    assert served_paths(EMBED) == ["/v1/embeddings", "/v1/score", "/tokenize", "/detokenize"]
    assert served_paths(("classify",)) == ["/v1/score", "/tokenize", "/detokenize"]
    assert "/v1/audio/transcriptions" in served_paths(("generate", "transcription"))


class Replica:
    """Stands in for the model replica: the ingress calls its tokenize(), which
    answers with Ray's response class, as Ray's vLLM engine does."""

    def __init__(self, hang: bool = False):
        self.hang = hang
        self.calls = []

    async def tokenize(self, request, raw_request_info=None):
        self.calls.append(request)
        if self.hang:
            await asyncio.Event().wait()
        yield TokenizeResponse(count=2, max_model_len=64, tokens=[1, 2])


def _client(replica, tasks=GENERATE, **limits) -> TestClient:
    card = ModelCard(id="m", object="model", owned_by="me", permission=[], metadata={})
    app = build_ingress_app(replica, "m", card, RequestLimits(**limits), model_tasks=tasks)
    return TestClient(app)


@pytest.mark.parametrize("path, content_type", [
    ("/v1/embeddings", "application/json"),
    ("/v1/score", "application/json"),
    ("/v1/audio/transcriptions", "multipart/form-data; boundary=x"),
])
def test_a_route_the_model_cannot_serve_is_a_404_that_says_why_whatever_the_body(path, content_type):
    response = _client(Replica()).post(path, content=b"garbage", headers={"content-type": content_type})
    assert response.status_code == 404
    error = response.json()["error"]
    assert (error["type"], error["code"]) == ("not_found_error", "unsupported_endpoint")
    assert error["message"].startswith(f"model 'm' does not serve {path}")
    assert "this model's tasks are generate" in error["message"]


def test_chat_on_an_embedding_model_is_a_404():
    response = _client(Replica(), tasks=EMBED).post("/v1/chat/completions", json={"messages": []})
    assert response.status_code == 404 and "tasks are embed" in response.json()["error"]["message"]


def test_tokenize_is_served_through_the_body_checks():
    replica = Replica()
    client = _client(replica, max_request_bytes=2048)
    ok = client.post("/tokenize", json={"model": "m", "prompt": "hi"})
    assert ok.status_code == 200 and ok.json()["tokens"] == [1, 2]
    assert [call.prompt for call in replica.calls] == ["hi"]

    too_big = client.post("/tokenize", json={"model": "m", "prompt": "x" * 4096})
    assert too_big.status_code == 413
    not_json = client.post("/tokenize", content=b"prompt=hi", headers={"content-type": "text/plain"})
    assert not_json.status_code == 415
    surrogate = client.post("/tokenize", content=b'{"model": "m", "prompt": "\\ud800"}',
                            headers={"content-type": "application/json"})
    assert surrogate.status_code == 400 and "surrogate" in surrogate.json()["error"]["message"]
    wrong_type = client.post("/tokenize", json={"model": "m", "prompt": 5})
    assert wrong_type.status_code == 400 and wrong_type.json()["error"]["param"] == "prompt"
    assert len(replica.calls) == 1  # none of the refused ones reached the replica


def test_tokenize_ends_at_the_request_timeout():
    response = _client(Replica(hang=True), request_timeout_seconds=0.05).post(
        "/tokenize", json={"model": "m", "prompt": "hi"})
    assert response.status_code == 504
    assert json.loads(response.content)["error"]["code"] == "request_timeout"


def test_every_post_route_is_in_the_table_once():
    paths = [endpoint.path for endpoint in ENDPOINTS]
    assert len(paths) == len(set(paths))


def test_the_limits_see_the_body_the_route_parsed():
    replica = Replica()
    response = _client(replica).post("/v1/chat/completions",
                                     json={"model": "m", "messages": [{"role": "wizard", "content": "hi"}]})
    assert response.status_code == 400 and response.json()["error"]["param"] == "messages[0].role"
