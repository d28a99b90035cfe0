"""Checks `spec.engine.args` against vLLM's own EngineArgs.

Importing vLLM takes seconds and the operator image has no vLLM, so the
argument names and simple types live in `engine_args.json`, generated from the
installed vLLM (`shardserve engine-args --write`, serve/engine_catalog.py); a test
fails when it drifts from the installed release.
"""

from __future__ import annotations

import difflib
import json
from functools import lru_cache
from pathlib import Path
from typing import Any

CATALOG_PATH = Path(__file__).with_name("engine_args.json")

# Set from typed spec fields or by the runtime itself; a second way to set
# them would make the spec lie.
RESERVED = {
    "model": "spec.model.source",
    "served_model_name": "spec.model.id",
    "tokenizer": "spec.model.source",
    "revision": "spec.model.revision",
    "tensor_parallel_size": "spec.parallelism.tensor",
    "pipeline_parallel_size": "spec.parallelism.pipeline",
    "distributed_executor_backend": "spec.parallelism.backend",
    "max_model_len": "spec.engine.maxModelLen",
    "dtype": "spec.engine.dtype",
    "max_num_seqs": "spec.engine.maxNumSeqs",
    "gpu_memory_utilization": "spec.engine.gpuMemoryUtilization",
    "kv_cache_memory_bytes": "spec.engine.kvCacheMemory",
    "enforce_eager": "spec.engine.enforceEager",
    "seed": "spec.engine.seed",
}

@lru_cache(maxsize=1)
def load_catalog() -> dict[str, Any]:
    catalog: dict[str, Any] = json.loads(CATALOG_PATH.read_text())
    return catalog


def _type_ok(kind: Any, value: Any) -> bool:
    if value is None or kind == "any":
        return True
    if isinstance(kind, dict):
        return value in kind["choices"]
    if kind == "float":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    expected = {"bool": bool, "str": str, "list": list, "dict": dict}[kind]
    return isinstance(value, expected)


def check_engine_args(args: dict[str, Any], path: str = "spec.engine.args") -> list[str]:
    """Problems with user-given engine arguments, each naming the field and rule."""
    known: dict[str, Any] = load_catalog()["args"]
    problems = []
    for name, value in args.items():
        where = f"{path}.{name}"
        if name in RESERVED:
            problems.append(f"{where}: set by {RESERVED[name]}; use that field instead")
        elif name not in known:
            hint = difflib.get_close_matches(name.replace("-", "_"), known, n=1)
            suggestion = f" (did you mean {hint[0]!r}?)" if hint else ""
            problems.append(f"{where}: not a vLLM engine argument{suggestion}")
        elif not _type_ok(known[name], value):
            kind = known[name]
            want = f"one of {kind['choices']}" if isinstance(kind, dict) else f"a {kind}"
            problems.append(f"{where}: must be {want}; got {value!r}")
    return problems
