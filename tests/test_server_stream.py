"""The replica's stream batching: first output at once, the rest batched."""

import asyncio
import time

import pytest

from shardserve.serve.replica import first_then_batched


async def slow_tokens(n: int, gap_s: float):
    for i in range(n):
        await asyncio.sleep(gap_s)
        yield i


@pytest.mark.asyncio
async def test_first_output_is_not_held_back_and_rest_is_batched():
    started = time.perf_counter()
    batches, times = [], []
    async for batch in first_then_batched(slow_tokens(20, 0.005), interval_ms=50):
        batches.append(batch)
        times.append(time.perf_counter() - started)
    assert batches[0] == [0]
    assert times[0] < 0.04, "first token waited for a batch interval"
    assert [t for b in batches for t in b] == list(range(20))  # nothing lost or reordered
    assert len(batches) < 20, "later tokens are batched"


@pytest.mark.asyncio
async def test_empty_stream_yields_nothing():
    async def empty():
        return
        yield  # pragma: no cover

    assert [b async for b in first_then_batched(empty(), interval_ms=50)] == []
