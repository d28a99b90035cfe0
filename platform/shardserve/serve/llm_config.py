"""Spec -> ray.serve.llm configuration (pure: no Ray, no vLLM, no I/O).

The same functions run under `shardserve run` and inside the cluster's Serve
controller (via `shardserve.app:build_app`), so both places serve one config.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from shardserve.api.chat_spec import ChatSpec
from shardserve.api.contract import CHAT_TEMPLATE_DIR, COLD_START_CALLBACK
from shardserve.api.lora_spec import LoraSpec
from shardserve.api.placement import Placement, cpu_threads_bind, placement_for
from shardserve.api.quantity import parse_quantity
from shardserve.api.serve_options import build_deployment_config
from shardserve.api.sources import mounted_path
from shardserve.api.spec import ModelDeployment, ModelSpec

# A stream's outputs after the first are sent in batches this often (Ray Serve
# LLM's default); the replica sends the first at once (first_then_batched).
STREAM_BATCHING_INTERVAL_MS = 50

# JSON from structured output (response_format, named and required tool
# choices) is compact: by default the grammar allows any whitespace between
# tokens, and a model can fill max_tokens with it and never close the object.
# vLLM takes disable_any_whitespace only with a named backend: xgrammar, the
# one "auto" picks first and the one that compiles tool-call structural tags
# (guidance refuses them). spec.engine.args.structured_outputs_config
# overrides each key.
STRUCTURED_OUTPUTS = {"backend": "xgrammar", "disable_any_whitespace": True}

# One adapter's download from s3:// or gs:// (Ray's downloader): its limit and tries.
ADAPTER_DOWNLOAD_TIMEOUT_S = 600.0
ADAPTER_DOWNLOAD_TRIES = 3


def resolve_model_source(model: ModelSpec, builtin_dir: Optional[str] = None) -> str:
    """What vLLM loads: a Hugging Face id, a cloud URI, or a local path."""
    scheme, location = model.scheme, model.location
    if scheme == "hf":
        return location.strip("/")
    if scheme in ("s3", "gs"):
        return model.source
    mounted = mounted_path(model.source)
    if mounted is not None:
        return str(mounted)
    if builtin_dir is None:
        raise ValueError("builtin:// sources need the directory the model is built in")
    return builtin_dir


def build_engine_kwargs(md: ModelDeployment, placement: Placement) -> dict[str, Any]:
    engine = md.spec.engine
    kwargs: dict[str, Any] = {
        "tensor_parallel_size": placement.tensor,
        "pipeline_parallel_size": placement.pipeline,
        "distributed_executor_backend": placement.backend,
        "dtype": engine.dtype,
        "enforce_eager": engine.enforce_eager,
    }
    optional = {
        "max_model_len": engine.max_model_len,
        "max_num_seqs": engine.max_num_seqs,
        "gpu_memory_utilization": engine.gpu_memory_utilization,
        "seed": engine.seed,
        "revision": md.spec.model.revision,
        "kv_cache_memory_bytes": int(parse_quantity(engine.kv_cache_memory)) if engine.kv_cache_memory else None,
    }
    kwargs.update({k: v for k, v in optional.items() if v is not None})
    kwargs.update(build_chat_kwargs(md.spec.chat))
    kwargs.update(build_lora_kwargs(md.spec.lora))
    kwargs.update(engine.args)
    if md.spec.tenants is not None:
        # Tenants' priority classes order vLLM's queue; under "fcfs" vLLM refuses any priority but 0.
        kwargs["scheduling_policy"] = "priority"
    kwargs["structured_outputs_config"] = build_structured_outputs(engine.args.get("structured_outputs_config") or {})
    return kwargs


def build_structured_outputs(given: dict[str, Any]) -> dict[str, Any]:
    """Our defaults under the spec's keys; the whitespace switch is dropped
    when the spec names a backend that refuses it (auto, outlines)."""
    config = {**STRUCTURED_OUTPUTS, **given}
    if config["backend"] not in ("xgrammar", "guidance") and "disable_any_whitespace" not in given:
        del config["disable_any_whitespace"]
    return config


def build_lora_kwargs(lora: Optional[LoraSpec]) -> dict[str, Any]:
    """vLLM's LoRA switches for spec.lora: batch slots (max_loras) sized by
    max_lora_rank, and the adapters kept in CPU memory (max_cpu_loras)."""
    if lora is None:
        return {}
    return {"enable_lora": True, "max_lora_rank": lora.max_rank, "max_loras": lora.max_adapters,
            "max_cpu_loras": lora.max_cpu_adapters}


def build_lora_config(lora: LoraSpec) -> dict[str, Any]:
    """Ray Serve LLM's LoRA settings: Serve's multiplexing keeps as many
    adapters per replica as vLLM keeps in CPU memory, so what Serve's router
    believes a replica holds is what its engine holds. The adapters' sources
    are resolved by the replica's own loader (serve/adapters.py), so Ray's
    dynamic_lora_loading_path stays unset."""
    return {"max_num_adapters_per_replica": lora.max_cpu_adapters,
            "download_timeout_s": ADAPTER_DOWNLOAD_TIMEOUT_S, "max_download_tries": ADAPTER_DOWNLOAD_TRIES}


def build_chat_kwargs(chat: Optional[ChatSpec]) -> dict[str, Any]:
    """vLLM front-end arguments for spec.chat (Ray Serve LLM routes them to the front end).

    A file template is read here, where the spec was loaded (`shardserve run`);
    a ConfigMap template is a file the operator mounts in the Ray pods, which
    vLLM reads when the replica starts."""
    if chat is None:
        return {}
    kwargs: dict[str, Any] = {}
    template = chat.template
    if template is not None:
        if template.inline is not None:
            kwargs["chat_template"] = template.inline
        elif template.file is not None:
            kwargs["chat_template"] = Path(template.file).read_text()
        elif template.config_map is not None:
            kwargs["chat_template"] = f"{CHAT_TEMPLATE_DIR}/{template.config_map.key}"
    if chat.tool_calling is not None:
        kwargs["tool_call_parser"] = chat.tool_calling.parser
        kwargs["enable_auto_tool_choice"] = chat.tool_calling.auto_tool_choice
    if chat.reasoning_parser is not None:
        kwargs["reasoning_parser"] = chat.reasoning_parser
    return kwargs


def build_llm_config(md: ModelDeployment, *, builtin_dir: Optional[str] = None) -> dict[str, Any]:
    """The ray.serve.llm LLMConfig (as a dict) for one ModelDeployment.

    CPU workers get their OpenMP threads pinned to disjoint cores of the pod
    (`resources.cpu`, else one core per worker): unpinned ranks fight over
    the same cores. A single worker keeps vLLM's own automatic binding.
    """
    spec = md.spec
    placement = placement_for(spec)
    env: dict[str, str] = {}
    if spec.resources.accelerator == "cpu" and placement.accelerators_per_replica > 1:
        cores = int(parse_quantity(spec.resources.cpu or "0")) or placement.accelerators_per_replica
        env["VLLM_CPU_OMP_THREADS_BIND"] = cpu_threads_bind(placement.accelerators_per_replica, cores)
    config: dict[str, Any] = {
        "model_loading_config": {
            "model_id": spec.model.id,
            "model_source": resolve_model_source(spec.model, builtin_dir),
        },
        "engine_kwargs": build_engine_kwargs(md, placement),
        "placement_group_config": {
            "bundles": [dict(b) for b in placement.bundles],
            "strategy": placement.strategy,
        },
        "deployment_config": build_deployment_config(md),
        "experimental_configs": {"stream_batching_interval_ms": STREAM_BATCHING_INTERVAL_MS},
        "runtime_env": {"env_vars": env} if env else None,
        "callback_config": {"callback_class": COLD_START_CALLBACK},
    }
    if spec.resources.accelerator_type:
        config["accelerator_type"] = spec.resources.accelerator_type
    if spec.lora is not None:
        config["lora_config"] = build_lora_config(spec.lora)
    return config
