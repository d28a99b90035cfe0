"""Past serving.maxQueuedRequests, new requests get a fast OpenAI-shaped 429
with Retry-After, while the admitted ones complete.

On the small-queue stack (2 running, 2 queued), which test_telemetry shares.
"""

import asyncio
import time

import httpx
import pytest

from tests.integration.conftest import SMALL_QUEUE, SmallQueue

pytestmark = [pytest.mark.integration, pytest.mark.stacks(SMALL_QUEUE)]


async def one(client: httpx.AsyncClient, i: int) -> tuple[int, float, dict, str]:
    started = time.monotonic()
    body = {"model": "tiny", "prompt": f"request {i}", "max_tokens": 128, "ignore_eos": True}
    response = await client.post("/v1/completions", json=body)
    return response.status_code, time.monotonic() - started, dict(response.headers), response.text


async def burst(base_url: str, n: int):
    async with httpx.AsyncClient(base_url=base_url, timeout=120) as client:
        return await asyncio.gather(*(one(client, i) for i in range(n)))


def test_overload_gets_fast_429s_and_admitted_requests_complete(small_queue: SmallQueue):
    results = asyncio.run(burst(small_queue.stack.base_url, 12))
    admitted = [r for r in results if r[0] == 200]
    rejected = [r for r in results if r[0] == 429]
    assert len(admitted) + len(rejected) == 12, [r[0] for r in results]
    # A sudden burst: the replica admits maxOngoingRequests + maxQueuedRequests (2 + 2; the
    # engine runs 2 and queues 2); the rest are turned away at once.
    assert len(admitted) >= 4 and len(rejected) >= 6
    slowest_admitted = max(r[1] for r in admitted)
    for _status, seconds, headers, text in rejected:
        assert headers["retry-after"] == "1"
        assert '"type":"rate_limit_error"' in text.replace(" ", "") and '"code":"queue_full"' in text.replace(" ", "")
        assert seconds < slowest_admitted / 2, "a rejection must not wait for the queue"
    for _status, _seconds, _headers, text in admitted:
        assert '"completion_tokens":128' in text.replace(" ", "")
    print(f"\n{len(admitted)} admitted (slowest {slowest_admitted:.1f}s), {len(rejected)} rejected "
          f"(slowest {max(r[1] for r in rejected) * 1000:.0f} ms)")


def test_serves_normally_once_the_queue_drains(small_queue: SmallQueue):
    response = httpx.post(f"{small_queue.stack.base_url}/v1/completions",
                          json={"model": "tiny", "prompt": "after", "max_tokens": 4}, timeout=60)
    assert response.status_code == 200
