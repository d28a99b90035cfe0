"""Checks `spec.engine.args` against vLLM's own EngineArgs and the OpenAI
front end's arguments (Ray Serve LLM passes both kinds through), and the
parser names of `spec.chat` against vLLM's registries.

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
    # front-end arguments with a typed field
    "chat_template": "spec.chat.template",
    "tool_call_parser": "spec.chat.toolCalling.parser",
    "enable_auto_tool_choice": "spec.chat.toolCalling.autoToolChoice",
    "reasoning_parser": "spec.chat.reasoningParser",
    "enable_lora": "spec.lora",
    "max_lora_rank": "spec.lora.maxRank",
    "max_loras": "spec.lora.maxAdapters",
    "max_cpu_loras": "spec.lora.maxCpuAdapters",
    "lora_modules": "spec.lora.adapters",
}

# Front-end arguments about the HTTP server, which shardserve owns: Ray Serve
# LLM ignores them or they would bypass the replica's own checks.
OWNED_BY_SERVER = {
    "host": "the replica's HTTP server", "port": "spec.serving.port", "uds": "the replica's HTTP server",
    "api_key": "spec.serving.apiKeySecret", "root_path": "spec.ingress.path",
    "ssl_keyfile": "spec.ingress.tlsSecret", "ssl_certfile": "spec.ingress.tlsSecret",
    "ssl_ca_certs": "spec.ingress.tlsSecret", "ssl_cert_reqs": "spec.ingress.tlsSecret",
    "ssl_ciphers": "spec.ingress.tlsSecret", "enable_ssl_refresh": "spec.ingress.tlsSecret",
    "allowed_origins": "the Ingress (CORS)", "allowed_methods": "the Ingress (CORS)",
    "allowed_headers": "the Ingress (CORS)", "allow_credentials": "the Ingress (CORS)",
    "middleware": "the replica's HTTP server", "uvicorn_log_level": "the replica's HTTP server",
    "disable_uvicorn_access_log": "the replica's HTTP server",
    "disable_access_log_for_endpoints": "the replica's HTTP server",
    "h11_max_incomplete_event_size": "spec.serving.maxRequestBytes", "h11_max_header_count": "the replica's HTTP server",
    "disable_fastapi_docs": "the replica's HTTP server", "enable_offline_docs": "the replica's HTTP server",
    "enable_request_id_headers": "the replica's HTTP server (it always returns x-request-id)",
    "log_config_file": "Ray's logging", "data_parallel_supervisor_port": "Ray Serve",
    "dp_supervisor_probe_interval_s": "Ray Serve", "dp_supervisor_probe_timeout_s": "Ray Serve",
    "dp_supervisor_probe_failure_threshold": "Ray Serve",
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
    """Problems with user-given engine and front-end arguments, each naming the field and rule."""
    catalog = load_catalog()
    # An argument in both lists goes to the front end (Ray Serve LLM's order).
    known: dict[str, Any] = {**catalog["args"], **catalog["frontend_args"]}
    problems = []
    for name, value in args.items():
        where = f"{path}.{name}"
        if name in RESERVED:
            problems.append(f"{where}: set by {RESERVED[name]}; use that field instead")
        elif name in OWNED_BY_SERVER:
            problems.append(f"{where}: shardserve's HTTP server owns this; it is set by {OWNED_BY_SERVER[name]}")
        elif name not in known:
            problems.append(f"{where}: not a vLLM engine or front-end argument{_did_you_mean(name.replace('-', '_'), known)}")
        elif not _type_ok(known[name], value):
            kind = known[name]
            want = f"one of {kind['choices']}" if isinstance(kind, dict) else f"a {kind}"
            problems.append(f"{where}: must be {want}; got {value!r}")
    return problems


def check_parser_name(name: str, registry: str, where: str) -> list[str]:
    """A tool-call or reasoning parser name against vLLM's registry ("tool_call_parsers", "reasoning_parsers")."""
    names: list[str] = load_catalog()[registry]
    if name in names:
        return []
    kind = "tool-call" if registry == "tool_call_parsers" else "reasoning"
    return [f"{where}: {name!r} is not a vLLM {kind} parser{_did_you_mean(name, names)}; "
            f"vLLM {load_catalog()['vllm_version']} has: {', '.join(names)}"]


def _did_you_mean(name: str, names: Any) -> str:
    hint = difflib.get_close_matches(name, list(names), n=1)
    return f" (did you mean {hint[0]!r}?)" if hint else ""
