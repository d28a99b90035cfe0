"""Spec -> ray.serve.llm configuration (pure: no Ray, no vLLM, no I/O).

The same functions run under `shardserve run` and inside the cluster's Serve
controller (via `shardserve.app:build_app`), so both places serve one config.
"""

from __future__ import annotations

import re
from typing import Any, Optional

from shardserve.api.placement import Placement, cpu_threads_bind, placement_for
from shardserve.api.spec import ModelDeployment, ModelSpec
from shardserve.serve.autoscaling.policy import build_autoscaling_config

# The Serve application builder, for `shardserve run` and serveConfigV2 alike.
APP_IMPORT_PATH = "shardserve.app:build_app"
# Where the operator mounts a pvc:// claim inside Ray pods.
PVC_MOUNT_ROOT = "/mnt/models"
LLM_DEPLOYMENT = "llm"
SERVER_CLS = "shardserve.serve.replica:ShardserveServer"
# Marks the end of the model download in a replica's start (cold_start.py).
COLD_START_CALLBACK = "shardserve.serve.telemetry.cold_start:ColdStartCallback"
# A stream's outputs after the first are sent in batches this often (Ray Serve
# LLM's default); the replica sends the first at once (server.first_then_batched).
STREAM_BATCHING_INTERVAL_MS = 50

# Serve's own per-replica limit, as a multiple of what a replica admits itself
# (build_deployment_config): room for a burst to reach the replica's 429.
SERVE_LIMIT_FACTOR = 4

# Ray Serve switches every Ray process of a deployment reads, set before Ray
# starts (`shardserve run`) or on the Ray pods (the rendered RayService).
# HAProxy on each node forwards requests straight to the model replicas' own
# HTTP servers ("direct ingress"). Its buffers hold headers up to 64 KiB, so
# oversized headers (over 32 KiB) get the replica's OpenAI-shaped 431 rather
# than HAProxy's HTML 400 (which only headers past 64 KiB still get).
RAY_SERVE_ENV = {"RAY_SERVE_ENABLE_HA_PROXY": "1", "RAY_SERVE_HAPROXY_TUNE_BUFSIZE": str(64 * 1024)}

# Serve answers its own plain-text 408 at its HTTP timeout; it waits a little
# longer than the ingress, which answers an OpenAI-shaped 504 and stops the engine.
PROXY_TIMEOUT_MARGIN_S = 5.0


def build_proxy_timeout(md: ModelDeployment) -> float:
    return md.spec.serving.request_timeout_seconds + PROXY_TIMEOUT_MARGIN_S


_UNITS = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18,
          "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60, "m": 1e-3}


def parse_quantity(quantity: str) -> float:
    """Kubernetes quantity -> number ('512Mi' -> 536870912, '500m' -> 0.5)."""
    match = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", quantity)
    if not match or match.group(2) not in _UNITS:
        raise ValueError(f"not a quantity: {quantity!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def resolve_model_source(model: ModelSpec, builtin_dir: Optional[str] = None) -> str:
    """What vLLM loads: a Hugging Face id, a cloud URI, or a local path."""
    scheme, location = model.scheme, model.location
    if scheme == "hf":
        return location.strip("/")
    if scheme in ("s3", "gs"):
        return model.source
    if scheme == "pvc":
        return f"{PVC_MOUNT_ROOT}/{location.strip('/')}"
    if scheme == "file":
        return "/" + location.lstrip("/")
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
    kwargs.update(engine.args)
    return kwargs


def build_deployment_config(md: ModelDeployment) -> dict[str, Any]:
    """Ray Serve deployment options for the model replicas."""
    spec = md.spec
    config: dict[str, Any] = {
        "name": LLM_DEPLOYMENT,
        # A replica admits maxOngoingRequests + maxQueuedRequests itself and
        # answers an OpenAI 429 past that (ingress.AdmissionLimit). Serve's own
        # limits sit above it and never reject (Serve's answer is plain text),
        # so excess requests reach the replica and get that 429 at once.
        "max_ongoing_requests": SERVE_LIMIT_FACTOR * (spec.serving.max_ongoing_requests + spec.serving.max_queued_requests),
        "max_queued_requests": -1,
        # Let in-flight requests finish before a replica stops.
        "graceful_shutdown_timeout_s": spec.serving.request_timeout_seconds,
    }
    scaling = spec.autoscaling
    if scaling is None:
        config["num_replicas"] = spec.effective_replicas
    else:
        config["autoscaling_config"] = build_autoscaling_config(
            min_replicas=scaling.min_replicas,
            max_replicas=scaling.max_replicas,
            initial_replicas=spec.effective_replicas,
            target_queue_depth=scaling.target_queue_depth,
            replica_capacity=spec.serving.max_ongoing_requests,
            upscale_delay_s=scaling.upscale_delay_seconds,
            downscale_delay_s=scaling.downscale_delay_seconds,
        )
    return config


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
        "server_cls": SERVER_CLS,
        "callback_config": {"callback_class": COLD_START_CALLBACK},
    }
    if spec.resources.accelerator_type:
        config["accelerator_type"] = spec.resources.accelerator_type
    return config
