"""The engine's own queue, as vLLM's scheduler sees it, for the autoscaler.

`QueueStatLogger` is a vLLM stat-logger plugin (entry point group
`vllm.stat_logger_plugins`, declared in pyproject.toml): vLLM builds it inside
the process that owns the engine, i.e. the model replica, and hands it the
scheduler's statistics after every engine step. The replica reads the latest
snapshot in `record_autoscaling_stats()`.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

from vllm.v1.metrics.loggers import StatLoggerBase

# vLLM steps many times a second while any request is in the engine, so a
# snapshot older than this means the engine is idle.
STALE_AFTER_S = 2.0


@dataclass(frozen=True)
class QueueSnapshot:
    waiting: int = 0
    running: int = 0
    at: float = 0.0


_lock = threading.Lock()
_latest: dict[int, QueueSnapshot] = {}  # per engine index (data-parallel ranks)


def read_queue(now: float | None = None) -> QueueSnapshot:
    """Waiting and running requests summed over this process's engines."""
    now = time.monotonic() if now is None else now
    with _lock:
        fresh = [s for s in _latest.values() if now - s.at <= STALE_AFTER_S]
    return QueueSnapshot(sum(s.waiting for s in fresh), sum(s.running for s in fresh), now)


class QueueStatLogger(StatLoggerBase):
    def __init__(self, vllm_config: Any, engine_index: int = 0):
        self._engine_index = engine_index

    def record(self, scheduler_stats: Any, iteration_stats: Any, mm_cache_stats: Any = None, engine_idx: int = 0) -> None:
        if scheduler_stats is None:
            return
        snapshot = QueueSnapshot(scheduler_stats.num_waiting_reqs, scheduler_stats.num_running_reqs, time.monotonic())
        with _lock:
            _latest[engine_idx] = snapshot

    def log_engine_initialized(self) -> None:
        pass
