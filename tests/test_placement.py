"""Placement: tensor x pipeline x node size -> bundles, pods, backend, strategy."""

import pytest

from shardserve.api.placement import PlacementError, check_model_shape, compute_placement, cpu_threads_bind

GPU = "nvidia.com/gpu"


@pytest.mark.parametrize(
    "tp, pp, per_node, accel, per_pod, pods, backend, strategy",
    [
        (1, 1, 8, GPU, 1, 1, "ray", "STRICT_PACK"),       # 8B on one GPU
        (4, 2, 8, GPU, 8, 1, "ray", "STRICT_PACK"),       # 70B: TP4 x PP2 fills one 8-GPU node
        (8, 2, 8, GPU, 8, 2, "ray", "PACK"),              # pipeline spans two nodes
        (4, 4, 8, GPU, 8, 2, "ray", "PACK"),              # two stages per pod
        (4, 3, 8, GPU, 4, 3, "ray", "PACK"),              # 3 stages: pods of one stage, none idle
        (2, 2, 2, GPU, 2, 2, "ray", "PACK"),              # small nodes
        (1, 1, 2, "cpu", 1, 1, "mp", "STRICT_PACK"),
        (2, 1, 2, "cpu", 2, 1, "mp", "STRICT_PACK"),
        (1, 2, 2, "cpu", 2, 1, "mp", "STRICT_PACK"),
    ],
)
def test_placements(tp, pp, per_node, accel, per_pod, pods, backend, strategy):
    p = compute_placement(tp, pp, per_node, accel)
    assert (p.accelerators_per_pod, p.pods_per_replica, p.backend, p.strategy) == (per_pod, pods, backend, strategy)
    assert p.accelerators_per_replica == tp * pp == per_pod * pods
    resource = "CPU" if accel == "cpu" else "GPU"
    assert list(p.bundles) == [{resource: 1.0}] * (tp * pp)


@pytest.mark.parametrize(
    "tp, pp, per_node, accel, backend, reason",
    [
        (16, 1, 8, GPU, "auto", "tensor: 16 is larger than a node"),
        (2, 2, 2, "cpu", "auto", "vLLM on CPU cannot span nodes"),
        (1, 1, 2, "cpu", "ray", "refuses the ray executor"),
        (1, 1, 8, GPU, "mp", "run vLLM workers as Ray actors"),
    ],
)
def test_rejected_plans_say_why(tp, pp, per_node, accel, backend, reason):
    with pytest.raises(PlacementError, match=reason):
        compute_placement(tp, pp, per_node, accel, backend)


def test_status_view():
    assert compute_placement(8, 2, 8).as_status() == {
        "acceleratorsPerReplica": 16, "podsPerReplica": 2, "acceleratorsPerPod": 8,
        "backend": "ray", "strategy": "PACK",
    }


@pytest.mark.parametrize(
    "tp, pp, config, problems",
    [
        (2, 1, {"num_attention_heads": 32, "num_key_value_heads": 8, "num_hidden_layers": 80}, 0),
        (16, 1, {"num_attention_heads": 32, "num_key_value_heads": 8, "num_hidden_layers": 80}, 0),  # KV heads replicated
        (3, 1, {"num_attention_heads": 32, "num_key_value_heads": 8, "num_hidden_layers": 80}, 2),
        (4, 1, {"num_attention_heads": 32, "num_key_value_heads": 6, "num_hidden_layers": 80}, 1),
        (1, 81, {"num_attention_heads": 32, "num_hidden_layers": 80}, 1),
        (3, 1, None, 0),  # config unknown (hf://): nothing to check
    ],
)
def test_model_shape(tp, pp, config, problems):
    assert len(check_model_shape(tp, pp, config)) == problems


@pytest.mark.parametrize(
    "world, cores, bind",
    [(1, 2, "0-1"), (2, 2, "0|1"), (2, 8, "0-3|4-7"), (3, 2, "0|1|0"), (4, 4, "0|1|2|3")],
)
def test_cpu_threads_bind(world, cores, bind):
    assert cpu_threads_bind(world, cores) == bind
