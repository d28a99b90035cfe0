"""The ingress's calls to the model replica: made in this process, and ended
with the request.

The ingress runs inside the model replica (`ShardserveServer` serves HTTP
itself), so a request goes from the HTTP server to the engine without a Ray
hop: no serialisation per streamed chunk, no second process.
`InProcessHandle` puts the replica's own methods behind the DeploymentHandle
interface Ray Serve LLM's OpenAI ingress calls: it only uses
`handle.options(...)` and `handle.<method>.remote(...)`, and the code below
`.cancel()` and `.aclose()`; this module provides exactly those. Of the
handle options, only the multiplexed model id (a LoRA adapter) changes what
the replica does: the call carries it in Serve's request context, where
LLMServer reads it. A request for an adapter another replica holds goes
there through a real DeploymentHandle (`TrackedHandle`), whose calls end
with the request in the same way.

Each call joins the list of the request that made it (`tracking_calls`), and
the ingress cancels them when the request times out or its client goes away;
the replica's stream then closes and vLLM aborts the request in the engine.
A non-streamed answer's calls are closed as soon as it is complete
(`finish_calls`), so the replica's side ends with it.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Callable, Generator, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Optional, Union

from shardserve.serve.http.errors import INTERNAL_MESSAGE, openai_error
from shardserve.serve.ray_private import multiplexed_model

logger = logging.getLogger(__name__)

# The calls the current request made (`tracking_calls`); None outside a request.
_calls: ContextVar[Optional[list[Call]]] = ContextVar("shardserve_model_calls", default=None)


class InProcessHandle:
    """Calls `target`'s methods in this process. Of the handle options only
    `multiplexed_model_id` applies; the others (stream, session_id) choose a
    replica, and this one was chosen."""

    def __init__(self, target: Any, multiplexed_model_id: str = ""):
        self._target, self._model_id = target, multiplexed_model_id

    def options(self, *, multiplexed_model_id: Optional[str] = None, **_options: Any) -> InProcessHandle:
        if multiplexed_model_id is None or multiplexed_model_id == self._model_id:
            return self
        return InProcessHandle(self._target, multiplexed_model_id)

    def __getattr__(self, name: str) -> _InProcessMethod:
        return _InProcessMethod(getattr(self._target, name), self._model_id)


class _InProcessMethod:
    def __init__(self, method: Any, model_id: str):
        self._method, self._model_id = method, model_id

    def options(self, **_options: Any) -> _InProcessMethod:
        return self

    def remote(self, *args: Any, **kwargs: Any) -> InProcessCall:
        call = InProcessCall(self._method, args, kwargs, self._model_id)
        _track(call)
        return call


def _track(call: Call) -> None:
    calls = _calls.get()
    if calls is not None:  # made for a request: it ends with the request
        calls.append(call)


class InProcessCall:
    """One call: awaited for a single result, or iterated for a stream."""

    def __init__(self, method: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], model_id: str = ""):
        self._method, self._args, self._kwargs, self._model_id = method, args, kwargs, model_id
        self._stream: Optional[AsyncIterator[Any]] = None
        self._cancelled = False

    def __await__(self) -> Generator[Any, None, Any]:
        return self._result().__await__()

    async def _result(self) -> Any:
        # LLMServer resolves the adapter before it returns the stream.
        with multiplexed_model(self._model_id):
            result = self._method(*self._args, **self._kwargs)
            return await result if inspect.isawaitable(result) else result

    def __aiter__(self) -> InProcessCall:
        return self

    async def __anext__(self) -> Any:
        if self._cancelled:
            raise StopAsyncIteration
        if self._stream is None:
            self._stream = await self._result()
        return await self._stream.__anext__()

    async def aclose(self) -> None:
        """Closes a stream that is done (its generator's cleanup runs now)."""
        self._cancelled = True
        if self._stream is not None and hasattr(self._stream, "aclose"):
            await self._stream.aclose()

    def cancel(self) -> None:
        """Stops the stream: closing the engine's generator makes vLLM abort the request.

        A stream being iterated right now is stopped by the cancellation of
        whoever iterates it; one that is idle between chunks is closed here.
        """
        self._cancelled = True
        stream = self._stream
        if stream is not None and hasattr(stream, "aclose") and not getattr(stream, "ag_running", False):
            asyncio.get_running_loop().create_task(stream.aclose())


class TrackedHandle:
    """A DeploymentHandle whose calls end with the request that made them."""

    def __init__(self, handle: Any):
        self._handle = handle

    def options(self, **options: Any) -> TrackedHandle:
        return TrackedHandle(self._handle.options(**options))

    def __getattr__(self, name: str) -> _TrackedMethod:
        return _TrackedMethod(getattr(self._handle, name))


class _TrackedMethod:
    def __init__(self, method: Any):
        self._method = method

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        response = self._method.remote(*args, **kwargs)
        _track(_RemoteCall(response))
        return response


class _RemoteCall:
    def __init__(self, response: Any):
        self._response = response

    def cancel(self) -> None:
        self._response.cancel()

    async def aclose(self) -> None:
        """Nothing to close: the replica's side ended with its last chunk."""


Call = Union[InProcessCall, _RemoteCall]


@contextmanager
def tracking_calls() -> Iterator[list[Call]]:
    """The calls made to model replicas inside the block (and by its stream, later)."""
    calls: list[Call] = []
    token = _calls.set(calls)
    try:
        yield calls
    finally:
        _calls.reset(token)


def cancel_calls(calls: list[Call]) -> None:
    for call in calls:
        call.cancel()


async def finish_calls(calls: list[Call]) -> None:
    """Closes calls whose answer is complete (a non-streamed response), so the
    replica's side of the request ends now rather than when collected."""
    for call in calls:
        await call.aclose()


def timeout_message(timeout_s: float) -> str:
    return f"the request took longer than the server's limit of {timeout_s:g}s"


def error_event(status: int, message: str, code: Optional[str]) -> str:
    """The end of a stream that failed: an OpenAI-shaped error event, then [DONE].

    The status line went out with the first chunk, so the error travels in the
    stream, as vLLM reports errors in the middle of a stream.
    """
    return f"data: {json.dumps(openai_error(status, message, code=code))}\n\ndata: [DONE]\n\n"


async def stream_until(
    chunks: AsyncIterable[Any], deadline: Optional[float], timeout_s: Optional[float], calls: list[Call],
) -> AsyncGenerator[Any, None]:
    """Passes a stream's chunks on until the deadline (loop time), then ends it with a timeout event.

    A failure upstream ends the stream with an error event instead of a
    broken connection. When the stream ends early (deadline, failure, or the
    client went away), the calls feeding it are cancelled.
    Only the wait for the next chunk runs under the timeout, never the yield.
    `chunks` is a response's body: any async iterable (Starlette's type), so
    it is closed only when it can be.
    """
    iterator = aiter(chunks)
    complete = False
    try:
        while True:
            timer = asyncio.timeout_at(deadline)
            try:
                async with timer:
                    chunk = await anext(iterator)
            except StopAsyncIteration:
                complete = True
                return
            except TimeoutError:
                yield error_event(504, timeout_message(timeout_s or 0), "request_timeout")
                return
            except Exception as err:
                logger.error("stream failed: %r", err)
                yield error_event(500, INTERNAL_MESSAGE, None)
                return
            if timer.expired():  # the engine answered its cancellation with an error chunk
                yield error_event(504, timeout_message(timeout_s or 0), "request_timeout")
                return
            yield chunk
    finally:
        if not complete:
            cancel_calls(calls)
        aclose = getattr(iterator, "aclose", None)
        if aclose is not None:
            await aclose()
