"""Where one replica's workers go: tensor x pipeline -> bundles, pods, backend.

Pure functions. A tensor-parallel group needs one node's fast interconnect,
so it never spans nodes; pipeline stages may. Pods are sized so that every
pod is full (no idle accelerators) and a pod never splits a stage.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from shardserve.api.spec import ModelDeploymentSpec

CPU = "cpu"


class PlacementError(ValueError):
    """The requested parallelism cannot be placed; the message says why."""


@dataclass(frozen=True)
class Placement:
    tensor: int
    pipeline: int
    accelerators_per_replica: int
    accelerators_per_pod: int
    pods_per_replica: int
    backend: str  # vLLM distributed_executor_backend: "mp" or "ray"
    strategy: str  # Ray placement-group strategy
    bundles: tuple[dict[str, float], ...]

    @property
    def spans_nodes(self) -> bool:
        return self.pods_per_replica > 1

    def as_status(self) -> dict[str, Any]:
        return {
            "acceleratorsPerReplica": self.accelerators_per_replica,
            "podsPerReplica": self.pods_per_replica,
            "acceleratorsPerPod": self.accelerators_per_pod,
            "backend": self.backend,
            "strategy": self.strategy,
        }


def _stages_per_pod(tensor: int, pipeline: int, per_node: int) -> int:
    """Most pipeline stages a pod holds such that pods come out equal and full."""
    fit = per_node // tensor
    return max(k for k in range(1, fit + 1) if pipeline % k == 0)


def compute_placement(
    tensor: int,
    pipeline: int,
    accelerators_per_node: int,
    accelerator: str = "nvidia.com/gpu",
    backend: str = "auto",
) -> Placement:
    """Resolves a replica's placement or raises PlacementError saying why not."""
    world = tensor * pipeline
    if tensor > accelerators_per_node:
        raise PlacementError(
            f"spec.parallelism.tensor: {tensor} is larger than a node "
            f"(spec.resources.acceleratorsPerNode={accelerators_per_node}); tensor parallelism "
            "needs one node's interconnect, so split the model with pipeline parallelism across nodes"
        )
    if world <= accelerators_per_node:
        per_pod, pods = world, 1
    else:
        per_pod = tensor * _stages_per_pod(tensor, pipeline, accelerators_per_node)
        pods = world // per_pod

    if accelerator == CPU:
        # vLLM's CPU platform runs workers as local processes only.
        if pods > 1:
            raise PlacementError(
                f"spec.parallelism: tensor x pipeline = {world} CPU workers does not fit one node "
                f"(spec.resources.acceleratorsPerNode={accelerators_per_node}); vLLM on CPU cannot span nodes"
            )
        if backend == "ray":
            raise PlacementError(
                "spec.parallelism.backend: vLLM's CPU platform refuses the ray executor; use mp or auto"
            )
        resolved = "mp"
        bundles = tuple({"CPU": 1.0} for _ in range(world))
    else:
        # ray.serve.llm runs GPU workers as Ray actors inside the replica's
        # placement group, on one node or many; it rejects any other executor.
        if backend == "mp":
            raise PlacementError(
                "spec.parallelism.backend: GPU replicas run vLLM workers as Ray actors "
                "in the replica's placement group; use ray or auto"
            )
        resolved = "ray"
        bundles = tuple({"GPU": 1.0} for _ in range(world))
    # One node: keep the group together or fail. Several: fill nodes first.
    strategy = "STRICT_PACK" if pods == 1 else "PACK"
    return Placement(
        tensor=tensor,
        pipeline=pipeline,
        accelerators_per_replica=world,
        accelerators_per_pod=per_pod,
        pods_per_replica=pods,
        backend=resolved,
        strategy=strategy,
        bundles=bundles,
    )


def check_model_shape(
    tensor: int, pipeline: int, model_config: Optional[dict[str, Any]]
) -> list[str]:
    """Problems splitting a model with this parallelism, when its config is known."""
    if not model_config:
        return []
    problems = []
    heads = model_config.get("num_attention_heads")
    kv_heads = model_config.get("num_key_value_heads", heads)
    layers = model_config.get("num_hidden_layers")
    if heads and heads % tensor:
        problems.append(
            f"spec.parallelism.tensor: {tensor} does not divide the model's {heads} attention heads"
        )
    # vLLM shards KV heads when there are enough, else replicates them evenly.
    if kv_heads and kv_heads % tensor and tensor % kv_heads:
        problems.append(
            f"spec.parallelism.tensor: {tensor} and the model's {kv_heads} key-value heads "
            "must divide one another"
        )
    if layers and pipeline > layers:
        problems.append(
            f"spec.parallelism.pipeline: {pipeline} stages exceed the model's {layers} layers"
        )
    return problems


def placement_for(spec: ModelDeploymentSpec) -> Placement:
    return compute_placement(
        spec.parallelism.tensor,
        spec.parallelism.pipeline,
        spec.resources.accelerators_per_node,
        spec.resources.accelerator,
        spec.parallelism.backend,
    )


def cpu_threads_bind(world_size: int, cores: int) -> str:
    """VLLM_CPU_OMP_THREADS_BIND for `world_size` CPU workers sharing `cores`.

    Each rank gets its own contiguous block of cores ("0-3|4-7"); with fewer
    cores than ranks, ranks share round-robin so each still gets one.
    """
    if cores < world_size:
        return "|".join(str(rank % cores) for rank in range(world_size))
    size = cores // world_size
    blocks = []
    for rank in range(world_size):
        first, last = rank * size, rank * size + size - 1
        blocks.append(str(first) if first == last else f"{first}-{last}")
    return "|".join(blocks)
