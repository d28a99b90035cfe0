"""The ingress calls the model replica in-process through the handle interface
Ray Serve LLM's ingress expects: awaited calls, streamed calls, cancellation."""

import asyncio

import pytest

from shardserve.serve.http.in_process import InProcessHandle
from shardserve.serve.http.request_lifetime import TrackedHandle, cancel_calls, tracking_calls


class Replica:
    """Stands in for the model replica: an awaited method and a streaming one."""

    def __init__(self):
        self.closed = False
        self.sent = 0

    async def check_health(self):
        return "healthy"

    async def chat(self, body, raw_request_info=None):
        async def stream():
            try:
                for i in range(body["n"]):
                    await asyncio.sleep(0.001)
                    self.sent += 1
                    yield [f"chunk {i}"]
            finally:
                self.closed = True

        return stream()


@pytest.mark.asyncio
async def test_awaited_and_streamed_calls_reach_the_replica_in_this_process():
    replica = Replica()
    handle = InProcessHandle(replica)
    assert await handle.check_health.remote() == "healthy"
    configured = handle.options(stream=True, multiplexed_model_id="tiny").options(session_id="s")
    assert [c async for c in configured.chat.remote({"n": 3}, None)] == [["chunk 0"], ["chunk 1"], ["chunk 2"]]
    assert replica.closed


@pytest.mark.asyncio
async def test_cancelling_an_idle_stream_closes_the_replicas_generator():
    replica = Replica()
    handle = TrackedHandle(InProcessHandle(replica))
    with tracking_calls() as calls:
        call = handle.options(stream=True).chat.remote({"n": 100})
    assert await anext(call) == ["chunk 0"]
    cancel_calls(calls)
    await asyncio.sleep(0.05)
    assert replica.closed and replica.sent == 1
    with pytest.raises(StopAsyncIteration):
        await anext(call)


@pytest.mark.asyncio
async def test_cancelling_the_reader_of_a_running_stream_closes_it_too():
    replica = Replica()
    call = InProcessHandle(replica).chat.remote({"n": 100})

    async def read_all():
        return [c async for c in call]

    reader = asyncio.create_task(read_all())
    await asyncio.sleep(0.02)
    reader.cancel()
    call.cancel()  # while the reader is inside the generator: its cancellation closes it
    with pytest.raises(asyncio.CancelledError):
        await reader
    await asyncio.sleep(0.01)
    assert replica.closed and replica.sent < 100
