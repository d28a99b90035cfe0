"""The model replica: Ray Serve LLM's LLMServer, which
- makes sure the weights exist on its own node first (a builtin model is
  built there, not shipped), and
- reports its engine's queue (waiting, running) to the autoscaler, and
- sends a stream's first output at once, batching only the rest (Ray Serve
  LLM's batcher holds the first token back for a whole interval).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, AsyncGenerator, Optional, TypeVar

from ray.llm._internal.serve.core.server.llm_server import LLMServer
from ray.llm._internal.serve.utils.batcher import Batcher

from shardserve.autoscaling import RUNNING, WAITING

T = TypeVar("T")

logger = logging.getLogger(__name__)


class ShardserveServer(LLMServer):
    async def __init__(self, llm_config: Any, *, builtin_model: Optional[str] = None, **kwargs: Any):
        self._builtin_model = builtin_model
        await super().__init__(llm_config, **kwargs)

    async def start(self) -> None:
        if getattr(self, "_builtin_model", None):
            from shardserve.models import ensure_builtin_model

            path = await asyncio.to_thread(ensure_builtin_model, self._builtin_model)
            logger.info("builtin model %s ready at %s", self._builtin_model, path)
        await super().start()

    async def record_autoscaling_stats(self) -> dict[str, float]:
        """The engine's queue, pushed by Serve to the autoscaling policy."""
        from shardserve.engine_stats import read_queue

        queue = read_queue()
        return {WAITING: float(queue.waiting), RUNNING: float(queue.running)}

    def _batch_output_stream(self, generator: AsyncGenerator[T, None]) -> AsyncGenerator[list[T], None]:
        return first_then_batched(generator, self._get_batch_interval_ms())


async def first_then_batched(generator: AsyncGenerator[T, None], interval_ms: Optional[float]) -> AsyncGenerator[list[T], None]:
    """Yields [first output] immediately, then batches of the rest every interval."""
    try:
        first = await generator.__anext__()
    except StopAsyncIteration:
        return
    yield [first]
    async for batch in Batcher(generator, interval_ms=interval_ms).stream():
        yield batch
