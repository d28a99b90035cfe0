"""The model replica: Ray Serve LLM's LLMServer that first makes sure the
weights exist on its own node (a builtin model is built there, not shipped)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Optional

from ray.llm._internal.serve.core.server.llm_server import LLMServer

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
