"""How long a request may live past the ingress, and what ends it early.

Serve cancels a handle call only when told to (`.cancel()`): cancelling the
coroutine that awaits a call leaves the model replica generating, so a
timed-out request would keep the engine busy until its last token. The
ingress therefore records each call a request makes to a model replica
(`TrackedHandle`, `tracking_calls`) and cancels them when the request times
out or its client goes away; the replica's stream then closes and vLLM aborts
the request in the engine.
"""

from __future__ import annotations

import asyncio
import json
import logging
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, AsyncIterator, Iterator, Optional

from ray.exceptions import RayActorError

from shardserve.errors import INTERNAL_MESSAGE, openai_error

logger = logging.getLogger(__name__)
REPLICA_FAILED_MESSAGE = "the model replica serving this request failed; retry the request"

_calls: ContextVar[Optional[list[Any]]] = ContextVar("shardserve_model_calls", default=None)


class TrackedHandle:
    """A deployment handle whose calls join the current request's list."""

    def __init__(self, handle: Any):
        self._handle = handle

    def options(self, **options: Any) -> "TrackedHandle":
        return TrackedHandle(self._handle.options(**options))

    def __getattr__(self, name: str) -> Any:
        return _TrackedMethod(getattr(self._handle, name))


class _TrackedMethod:
    def __init__(self, method: Any):
        self._method = method

    def options(self, **options: Any) -> "_TrackedMethod":
        return _TrackedMethod(self._method.options(**options))

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        response = self._method.remote(*args, **kwargs)
        calls = _calls.get()
        if calls is not None:
            calls.append(response)
        return response


@contextmanager
def tracking_calls() -> Iterator[list[Any]]:
    """The calls made to model replicas inside the block (and by its stream, later)."""
    calls: list[Any] = []
    token = _calls.set(calls)
    try:
        yield calls
    finally:
        _calls.reset(token)


def cancel_calls(calls: list[Any]) -> None:
    for call in calls:
        call.cancel()


def timeout_message(timeout_s: float) -> str:
    return f"the request took longer than the server's limit of {timeout_s:g}s"


def failure_of(err: BaseException) -> tuple[int, str, Optional[str]]:
    """Status, message and code for a call that failed: a replica that died is a
    503 the client may retry; anything else is an opaque 500."""
    if isinstance(err, RayActorError) or isinstance(err.__cause__, RayActorError):
        return 503, REPLICA_FAILED_MESSAGE, "replica_failed"
    return 500, INTERNAL_MESSAGE, None


def error_event(status: int, message: str, code: Optional[str]) -> str:
    """The end of a stream that failed: an OpenAI-shaped error event, then [DONE].

    The status line went out with the first chunk, so the error travels in the
    stream, as vLLM reports errors in the middle of a stream.
    """
    return f"data: {json.dumps(openai_error(status, message, code=code))}\n\ndata: [DONE]\n\n"


async def stream_until(
    chunks: AsyncIterator[Any], deadline: Optional[float], timeout_s: Optional[float], calls: list[Any],
) -> AsyncIterator[Any]:
    """Passes a stream's chunks on until the deadline (loop time), then ends it with a timeout event.

    A failure upstream (e.g. the replica died) ends the stream with an error
    event instead of a broken connection. When the stream ends early (deadline,
    failure, or the client went away), the calls feeding it are cancelled.
    Only the wait for the next chunk runs under the timeout, never the yield.
    """
    complete = False
    try:
        while True:
            try:
                async with asyncio.timeout_at(deadline):
                    chunk = await anext(chunks)
            except StopAsyncIteration:
                complete = True
                return
            except TimeoutError:
                yield error_event(504, timeout_message(timeout_s or 0), "request_timeout")
                return
            except Exception as err:
                logger.error("stream failed: %r", err)
                yield error_event(*failure_of(err))
                return
            yield chunk
    finally:
        if not complete:
            cancel_calls(calls)
        await chunks.aclose()
