"""The ingress's calls to the model replica.

In-process through the handle interface Ray Serve LLM's ingress expects:
awaited calls, streamed calls, cancellation. A request's lifetime: a stream
passes until the deadline, then one OpenAI-shaped error event ends it; a
stream that ends early cancels the model calls feeding it."""

import asyncio
import json

import pytest

from shardserve.serve.http.calls import InProcessHandle, cancel_calls, stream_until, tracking_calls


class Replica:
    """Stands in for the model replica: an awaited method and a streaming one
    whose stream stalls (waits for the engine) after `stall_after` chunks."""

    def __init__(self, stall_after: int = 1000):
        self.stall_after = stall_after
        self.closed = asyncio.Event()
        self.stalled = asyncio.Event()
        self.sent = 0

    async def check_health(self):
        return "healthy"

    async def chat(self, body, raw_request_info=None):
        async def stream():
            try:
                for i in range(body["n"]):
                    if i == self.stall_after:
                        self.stalled.set()
                        await asyncio.Event().wait()  # an engine step that never ends
                    self.sent += 1
                    yield [f"chunk {i}"]
            finally:
                self.closed.set()

        return stream()


@pytest.mark.asyncio
async def test_awaited_and_streamed_calls_reach_the_replica_in_this_process():
    replica = Replica()
    handle = InProcessHandle(replica)
    assert await handle.check_health.remote() == "healthy"
    configured = handle.options(stream=True, multiplexed_model_id="tiny").options(session_id="s")
    assert [c async for c in configured.chat.remote({"n": 3}, None)] == [["chunk 0"], ["chunk 1"], ["chunk 2"]]
    assert replica.closed.is_set()


@pytest.mark.asyncio
async def test_cancelling_an_idle_stream_closes_the_replicas_generator():
    replica = Replica()
    handle = InProcessHandle(replica)
    with tracking_calls() as calls:
        call = handle.options(stream=True).chat.remote({"n": 100})
    assert await anext(call) == ["chunk 0"]
    cancel_calls(calls)
    await asyncio.wait_for(replica.closed.wait(), 10)  # closed by the task cancel() started
    assert replica.sent == 1
    with pytest.raises(StopAsyncIteration):
        await anext(call)


@pytest.mark.asyncio
async def test_cancelling_the_reader_of_a_running_stream_closes_it_too():
    replica = Replica(stall_after=2)
    call = InProcessHandle(replica).chat.remote({"n": 100})

    async def read_all():
        return [c async for c in call]

    reader = asyncio.create_task(read_all())
    await replica.stalled.wait()  # the reader is inside the replica's generator
    reader.cancel()
    call.cancel()  # a running generator is not closed twice: the reader's cancellation closes it
    with pytest.raises(asyncio.CancelledError):
        await reader
    assert replica.closed.is_set() and replica.sent == 2


class Upstream:
    """An SSE chunk source that records whether it was closed (the replica's stream);
    after `stall_after` chunks it waits for an engine step that never ends."""

    def __init__(self, n: int, stall_after: int = 1000):
        self.n, self.stall_after = n, stall_after
        self.sent = 0
        self.closed = False

    async def chunks(self):
        try:
            for i in range(self.n):
                if i == self.stall_after:
                    await asyncio.Event().wait()
                self.sent += 1
                yield f"data: {i}\n\n"
        finally:
            self.closed = True


class Call:
    """Stands in for a call to the model replica (InProcessCall): only cancel() matters here."""

    def __init__(self):
        self.cancelled = False

    def cancel(self):
        self.cancelled = True


async def collect(upstream: Upstream, timeout_s: float, calls=()) -> list[str]:
    deadline = asyncio.get_running_loop().time() + timeout_s
    return [chunk async for chunk in stream_until(upstream.chunks(), deadline, timeout_s, list(calls))]


@pytest.mark.asyncio
async def test_a_stream_within_the_deadline_passes_unchanged():
    upstream, call = Upstream(5), Call()
    assert await collect(upstream, timeout_s=5, calls=[call]) == [f"data: {i}\n\n" for i in range(5)]
    assert upstream.closed
    assert not call.cancelled, "a finished stream needs no cancel"


@pytest.mark.asyncio
async def test_a_stream_past_the_deadline_ends_with_a_504_event_and_closes_upstream():
    upstream, call = Upstream(1000, stall_after=3), Call()
    chunks = await collect(upstream, timeout_s=0.1, calls=[call])
    assert len(chunks) == 3 + 1
    assert all(c.startswith("data: ") and c.endswith("\n\n") for c in chunks)
    last = chunks[-1]
    event, done = last.split("\n\n")[:2]
    error = json.loads(event.removeprefix("data: "))["error"]
    assert error["code"] == "request_timeout" and error["type"] == "timeout_error"
    assert "0.1s" in error["message"]
    assert done == "data: [DONE]"
    assert upstream.closed and call.cancelled  # closed: it cannot produce another chunk


@pytest.mark.asyncio
async def test_a_consumer_that_stops_early_closes_upstream():
    upstream, call = Upstream(1000), Call()
    deadline = asyncio.get_running_loop().time() + 5
    stream = stream_until(upstream.chunks(), deadline, 5, [call])
    assert await anext(stream) == "data: 0\n\n"
    await stream.aclose()  # what Starlette does when the client disconnects
    assert upstream.closed and call.cancelled


@pytest.mark.asyncio
async def test_an_upstream_failure_ends_the_stream_with_an_error_event_not_a_broken_connection():
    async def dies():
        yield "data: 0\n\n"
        raise RuntimeError("engine step failed")

    call = Call()
    deadline = asyncio.get_running_loop().time() + 5
    chunks = [c async for c in stream_until(dies(), deadline, 5, [call])]
    assert chunks[0] == "data: 0\n\n"
    event, done = chunks[1].split("\n\n")[:2]
    error = json.loads(event.removeprefix("data: "))["error"]
    assert error["type"] == "server_error" and "engine step failed" not in error["message"]
    assert done == "data: [DONE]" and call.cancelled


def test_calls_join_the_request_that_made_them_and_no_other():
    replica = Replica()
    handle = InProcessHandle(replica)
    outside = handle.options(stream=True).chat.remote({"n": 1})  # outside a request: not recorded
    with tracking_calls() as calls:
        first = handle.options(stream=True).chat.remote({"n": 1})
        second = handle.chat.options(stream=True).remote({"n": 2})
        with tracking_calls() as inner:
            third = handle.chat.remote({"n": 3})
    after = handle.chat.remote({"n": 4})
    assert calls == [first, second] and inner == [third]
    assert outside not in calls and after not in calls


class Body:
    """A response body as Starlette allows it: an async iterable, not a generator
    (no __anext__ of its own, and an iterator with no aclose)."""

    def __init__(self, chunks):
        self.chunks = chunks

    def __aiter__(self):
        return self.Iterator(iter(self.chunks))

    class Iterator:
        def __init__(self, chunks):
            self.chunks = chunks

        async def __anext__(self):
            try:
                return next(self.chunks)
            except StopIteration:
                raise StopAsyncIteration from None


@pytest.mark.asyncio
async def test_any_async_iterable_body_streams_and_ends_cleanly():
    deadline = asyncio.get_running_loop().time() + 5
    chunks = [f"data: {i}\n\n" for i in range(3)]
    assert [c async for c in stream_until(Body(chunks), deadline, 5, [])] == chunks
    early = stream_until(Body(chunks), deadline, 5, [Call()])
    assert await anext(early) == chunks[0]
    await early.aclose()  # a consumer that stops: nothing to close upstream, and no error


class AdapterReplica:
    """Says which multiplexed model Serve's request context names during the call."""

    async def chat(self, _body):
        from ray import serve

        return serve.get_multiplexed_model_id()


@pytest.mark.asyncio
async def test_the_adapter_a_request_names_reaches_serves_request_context():
    handle = InProcessHandle(AdapterReplica())
    assert await handle.options(stream=True, multiplexed_model_id="tiny-a").chat.remote({}) == "tiny-a"
    # The base model's calls name none, whatever the HTTP request's own context said.
    from ray.serve.context import _set_request_context

    _set_request_context(multiplexed_model_id="from-a-header")
    assert await handle.options(stream=True).chat.remote({}) == ""
    from ray import serve

    assert serve.get_multiplexed_model_id() == "from-a-header"  # restored after the call
