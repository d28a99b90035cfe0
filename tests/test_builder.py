"""Spec -> ray.serve.llm configuration."""

from pathlib import Path

import pytest
import yaml

from shardserve.api.contract import PVC_MOUNT_ROOT
from shardserve.api.quantity import parse_quantity
from shardserve.api.validation import parse_deployment
from shardserve.serve.llm_config import STREAM_BATCHING_INTERVAL_MS, build_llm_config, resolve_model_source

TINY = Path(__file__).resolve().parents[1] / "manifests" / "examples" / "tiny-cpu.yaml"


def deployment(**spec_changes):
    doc = yaml.safe_load(TINY.read_text())
    doc["spec"].update(spec_changes)
    return parse_deployment(doc)


def test_tiny_cpu_config():
    config = build_llm_config(deployment(), builtin_dir="/cache/tiny")
    assert config["model_loading_config"] == {"model_id": "tiny", "model_source": "/cache/tiny"}
    assert config["engine_kwargs"] == {
        "tensor_parallel_size": 1,
        "pipeline_parallel_size": 1,
        "distributed_executor_backend": "mp",
        "dtype": "float32",
        "enforce_eager": False,
        "max_model_len": 256,
        "kv_cache_memory_bytes": 256 * 2**20,
        "structured_outputs_config": {"backend": "xgrammar", "disable_any_whitespace": True},
    }
    assert config["placement_group_config"] == {"bundles": [{"CPU": 1.0}], "strategy": "STRICT_PACK"}
    assert config["deployment_config"]["num_replicas"] == 1
    # The replica admits 64 + 256 itself (a JSON 429 past that); Serve's limits never act first.
    assert config["deployment_config"]["max_queued_requests"] == -1
    assert config["deployment_config"]["max_ongoing_requests"] > 64 + 256
    assert config["runtime_env"] is None  # one worker: vLLM binds its threads itself
    assert config["experimental_configs"]["stream_batching_interval_ms"] == STREAM_BATCHING_INTERVAL_MS


def test_tensor_parallel_cpu_pins_one_core_per_worker():
    config = build_llm_config(deployment(parallelism={"tensor": 2}), builtin_dir="/m")
    assert config["engine_kwargs"]["tensor_parallel_size"] == 2
    assert config["placement_group_config"]["bundles"] == [{"CPU": 1.0}, {"CPU": 1.0}]
    assert config["runtime_env"]["env_vars"]["VLLM_CPU_OMP_THREADS_BIND"] == "0|1"


def test_gpu_autoscaled_config_passes_engine_args_through():
    md = deployment(
        model={"id": "llama-70b", "source": "hf://meta-llama/Llama-3.1-70B-Instruct", "revision": "main"},
        engine={"maxModelLen": 8192, "dtype": "bfloat16", "args": {"enable_prefix_caching": True}},
        parallelism={"tensor": 4, "pipeline": 2},
        resources={"accelerator": "nvidia.com/gpu", "acceleratorsPerNode": 8, "acceleratorType": "H100"},
        replicas=None,
        autoscaling={"minReplicas": 1, "maxReplicas": 4, "targetQueueDepth": 4},
    )
    config = build_llm_config(md)
    assert config["model_loading_config"]["model_source"] == "meta-llama/Llama-3.1-70B-Instruct"
    assert config["engine_kwargs"]["revision"] == "main"
    assert config["engine_kwargs"]["enable_prefix_caching"] is True
    assert config["engine_kwargs"]["distributed_executor_backend"] == "ray"
    assert config["placement_group_config"] == {"bundles": [{"GPU": 1.0}] * 8, "strategy": "STRICT_PACK"}
    assert config["accelerator_type"] == "H100"
    assert config["runtime_env"] is None
    scaling = config["deployment_config"]["autoscaling_config"]
    assert (scaling["min_replicas"], scaling["initial_replicas"], scaling["max_replicas"]) == (1, 1, 4)
    assert "num_replicas" not in config["deployment_config"]


def test_config_is_accepted_by_ray_serve_llm():
    from ray.serve.llm import LLMConfig

    llm_config = LLMConfig(**build_llm_config(deployment(), builtin_dir="/cache/tiny"))
    assert llm_config.model_id == "tiny"
    assert type(llm_config.accelerator_config).__name__ == "CPUConfig"


@pytest.mark.parametrize(
    "source, resolved",
    [
        ("hf://meta-llama/Llama-3.1-8B-Instruct", "meta-llama/Llama-3.1-8B-Instruct"),
        ("s3://bucket/models/llama", "s3://bucket/models/llama"),
        ("gs://bucket/llama", "gs://bucket/llama"),
        ("pvc://model-store/llama/8b", f"{PVC_MOUNT_ROOT}/model-store/llama/8b"),
        ("file:///models/llama", "/models/llama"),
        ("builtin://tiny", "/built/here"),
    ],
)
def test_model_sources(source, resolved):
    md = deployment(model={"id": "m", "source": source})
    assert resolve_model_source(md.spec.model, builtin_dir="/built/here") == resolved


@pytest.mark.parametrize("quantity, value",
                         [("512Mi", 512 * 2**20), ("2", 2), ("500m", 0.5), ("1.5Gi", 1.5 * 2**30), ("4k", 4000)])
def test_parse_quantity(quantity, value):
    assert parse_quantity(quantity) == value
