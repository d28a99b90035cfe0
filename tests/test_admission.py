"""A replica admits maxOngoingRequests + maxQueuedRequests requests at once;
past that, an immediate OpenAI-shaped 429 with Retry-After."""

import asyncio

import httpx
import pytest
from fastapi import Request

from shardserve.serve.http.ingress import build_fastapi_app
from shardserve.serve.http.limits import RequestLimits
from shardserve.serve.http.middleware import _is_api_post
from shardserve.serve.telemetry import metrics


class Counter:
    """Stands in for the rejected-requests counter (a Ray metric)."""

    def __init__(self):
        self.tags = []

    def inc(self, tags):
        self.tags.append(tags)


@pytest.mark.asyncio
async def test_requests_past_the_replicas_limit_get_an_immediate_429(monkeypatch):
    counter = Counter()
    monkeypatch.setattr(metrics, "_rejected", counter)
    app = build_fastapi_app(RequestLimits(max_ongoing_requests=2, max_queued_requests=1), application="chat-app")
    release, all_in = asyncio.Event(), asyncio.Event()
    entered = 0

    @app.post("/v1/slow")
    async def slow(request: Request):
        nonlocal entered
        entered += 1
        if entered == 3:
            all_in.set()
        await release.wait()
        return {"ok": True}

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://replica") as client:
        admitted = [asyncio.create_task(client.post("/v1/slow", json={})) for _ in range(3)]
        await asyncio.wait_for(all_in.wait(), 10)  # three requests hold the replica's slots
        rejected = await asyncio.gather(*(client.post("/v1/slow", json={}) for _ in range(2)))
        assert (await client.get("/health")).status_code == 200  # never counted or refused
        release.set()
        done = await asyncio.gather(*admitted)
        after = await client.post("/v1/slow", json={})

    assert [r.status_code for r in done] == [200, 200, 200]
    for response in rejected:
        assert response.status_code == 429 and response.headers["retry-after"] == "1"
        error = response.json()["error"]
        assert (error["type"], error["code"]) == ("rate_limit_error", "queue_full")
    assert after.status_code == 200  # the slots came back
    assert counter.tags == [{"application": "chat-app", "reason": "queue_full"}] * 2


@pytest.mark.parametrize("scope, applies", [
    ({"type": "http", "method": "POST", "path": "/v1/chat/completions"}, True),
    ({"type": "http", "method": "POST", "path": "/v1/completions"}, True),
    ({"type": "http", "method": "GET", "path": "/v1/models"}, False),
    ({"type": "http", "method": "GET", "path": "/health"}, False),
    ({"type": "http", "method": "POST", "path": "/v1/embeddings"}, True),
    ({"type": "http", "method": "POST", "path": "/tokenize"}, True),
    ({"type": "http", "method": "POST", "path": "/detokenize"}, True),
    ({"type": "http", "method": "GET", "path": "/metrics"}, False),
    ({"type": "lifespan"}, False),
])
def test_admission_and_body_checks_apply_to_every_post(scope, applies):
    assert _is_api_post(scope) is applies
