"""Times the weight load inside vLLM's engine processes, for cold_start.py.

`record_weight_load` is a vLLM general plugin (entry point group
`vllm.general_plugins`, declared in pyproject.toml): vLLM runs it in each of
its processes. When the replica names a file in SHARDSERVE_WEIGHT_LOAD_FILE
(inherited by the engine processes it starts), the plugin times
BaseModelLoader.load_model, i.e. building the model and reading its weights,
and appends the times there. Workers that do not inherit the replica's
environment (Ray actors on other nodes) leave no times, and the replica folds
weight_load into the next phase. Without the variable it does nothing.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Optional

from shardserve.api.contract import WEIGHT_LOAD_FILE_ENV


def record_weight_load() -> None:
    path = os.environ.get(WEIGHT_LOAD_FILE_ENV)
    if not path:
        return
    from vllm.model_executor.model_loader.base_loader import BaseModelLoader

    load_model = BaseModelLoader.load_model
    if getattr(load_model, "_shardserve_timed", False):
        return  # vLLM may load plugins more than once per process

    def timed_load_model(self: Any, *args: Any, **kwargs: Any) -> Any:
        started = time.time()
        model = load_model(self, *args, **kwargs)
        append_weight_load(path, started, time.time())
        return model

    timed_load_model._shardserve_timed = True  # type: ignore[attr-defined]
    BaseModelLoader.load_model = timed_load_model  # type: ignore[method-assign]


def append_weight_load(path: str, started: float, ended: float) -> None:
    try:
        with open(path, "a") as f:
            f.write(json.dumps({"start": started, "end": ended, "pid": os.getpid()}) + "\n")
    except OSError:
        pass  # timing is informative; never fail a load for it


def read_weight_load(path: str) -> Optional[tuple[float, float]]:
    """(first start, last end) over the engine processes that loaded weights."""
    try:
        with open(path) as f:
            loads = [json.loads(line) for line in f if line.strip()]
    except (OSError, ValueError):
        return None
    if not loads:
        return None
    return min(x["start"] for x in loads), max(x["end"] for x in loads)
