"""The model replica's own methods behind the DeploymentHandle interface that
Ray Serve LLM's OpenAI ingress calls.

The ingress runs inside the model replica (`ShardserveServer` serves HTTP
itself), so a request goes from the HTTP server to the engine without a Ray
hop: no serialisation per streamed chunk, no second process. `OpenAiIngress`
only uses `handle.options(...)` and `handle.<method>.remote(...)`, and the
request-lifetime code `.cancel()` and `.aclose()`; this module provides
exactly those.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Generator
from typing import Any, Optional


class InProcessHandle:
    """Calls `target`'s methods in this process; handle options do not apply."""

    def __init__(self, target: Any):
        self._target = target

    def options(self, **_options: Any) -> InProcessHandle:
        # stream=True, session_id, multiplexed_model_id: routing choices, and
        # the routing already happened (this replica was chosen).
        return self

    def __getattr__(self, name: str) -> _InProcessMethod:
        return _InProcessMethod(getattr(self._target, name))


class _InProcessMethod:
    def __init__(self, method: Any):
        self._method = method

    def options(self, **_options: Any) -> _InProcessMethod:
        return self

    def remote(self, *args: Any, **kwargs: Any) -> InProcessCall:
        return InProcessCall(self._method, args, kwargs)


class InProcessCall:
    """One call: awaited for a single result, or iterated for a stream."""

    def __init__(self, method: Any, args: tuple, kwargs: dict):
        self._method, self._args, self._kwargs = method, args, kwargs
        self._stream: Optional[AsyncIterator[Any]] = None
        self._cancelled = False

    def __await__(self) -> Generator[Any, None, Any]:
        return self._result().__await__()

    async def _result(self) -> Any:
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
