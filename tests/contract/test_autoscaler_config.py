"""Judge: the Ray autoscaler's view of the RayCluster KubeRay creates from our RayService.

With `enableInTreeAutoscaling` KubeRay runs Ray's autoscaler as a sidecar of
the head pod. Without `autoscalerOptions.version: v2` it is the v1 monitor
(utils.IsAutoscalingV2Enabled, ray-operator/controllers/ray/utils/util.go:708,
v1.5.1), and it builds its node types from the RayCluster CR with
`_derive_autoscaling_config_from_ray_cr` (ray/autoscaler/_private/kuberay/
autoscaling_config.py). If that raises, the sidecar exits
(`StandardAutoscaler.reset(errors_fatal=True)`, `Monitor(retry_on_failure=False)`
in kuberay/run_autoscaler.py) and the head pod is never Ready.
"""

from __future__ import annotations

import copy

import pytest
from ray.autoscaler._private.kuberay.autoscaling_config import _derive_autoscaling_config_from_ray_cr

from tests.contract.kuberay import build_raycluster, worker_groups
from tests.contract.specs import GPU, SPEC_IDS, SPECS, TYPED_SPEC_IDS, placement, rendered_rayservice

HEAD_NODE_TYPE = "headgroup"
_DERIVED: dict[str, dict | ValueError] = {}


def derive(spec_id: str) -> dict:
    """What the autoscaler sidecar computes for this spec's RayCluster (raises as it would).

    Computed once per spec (each call validates against Ray's cluster schema);
    callers get their own copy.
    """
    if spec_id not in _DERIVED:
        try:
            _DERIVED[spec_id] = _derive_autoscaling_config_from_ray_cr(build_raycluster(rendered_rayservice(spec_id)))
        except ValueError as err:
            _DERIVED[spec_id] = err
    outcome = _DERIVED[spec_id]
    if isinstance(outcome, ValueError):
        raise outcome
    return copy.deepcopy(outcome)


def derived_or_fail(spec_id: str) -> dict:
    try:
        return derive(spec_id)
    except ValueError as err:
        pytest.fail(f"the autoscaler cannot read this RayCluster, so it never starts (review #1): {err}")


def worker_node_types(config: dict) -> dict[str, dict]:
    return {name: t for name, t in config["available_node_types"].items() if name != HEAD_NODE_TYPE}


def accelerator_type_resource(gpu_type: str) -> str:
    # The resource Ray Serve LLM asks for in every bundle
    # (ray/llm/_internal/serve/core/configs/accelerators.py format_ray_accelerator_resource).
    return f"accelerator_type:{gpu_type}"


def check_gpus_and_cpus(spec_id: str, node_type: dict) -> None:
    resources = node_type["resources"]
    place = placement(spec_id)
    if SPECS[spec_id].spec.resources.accelerator == GPU:
        assert resources.get("GPU") == place.accelerators_per_pod, (
            f"worker node type offers GPU={resources.get('GPU')}, a pod holds {place.accelerators_per_pod}")
    else:
        assert not resources.get("GPU"), f"a CPU worker node type offers GPU={resources['GPU']}"
    assert resources["CPU"] >= 1, f"worker node type offers CPU={resources['CPU']}: no room for the replica actor"


def check_accelerator_type(gpu_type: str, node_type: dict) -> None:
    key = accelerator_type_resource(gpu_type)
    assert node_type["resources"].get(key, 0) >= 1, (
        f"acceleratorType {gpu_type}: the worker node type does not offer {key!r}, which Ray Serve LLM "
        f"adds to every bundle, so the autoscaler never launches a node for a replica (review #3); "
        f"it offers {sorted(node_type['resources'])}")


@pytest.mark.parametrize("spec_id", SPEC_IDS)
def test_autoscaler_reads_the_raycluster_review_1(spec_id):
    """Review #1: deriving the node types must not raise (a GPU spec without resources.cpu does today)."""
    config = derived_or_fail(spec_id)
    assert set(config["available_node_types"]) == {HEAD_NODE_TYPE} | {
        g["groupName"] for g in worker_groups(build_raycluster(rendered_rayservice(spec_id)))}


@pytest.mark.parametrize("spec_id", SPEC_IDS)
def test_worker_node_type_offers_a_pods_gpus_and_a_cpu(spec_id):
    """Review #1: every worker node type has GPU == acceleratorsPerPod (none on CPU) and CPU >= 1."""
    config = derived_or_fail(spec_id)
    assert worker_node_types(config), "no worker node type: the autoscaler can launch nothing"
    for node_type in worker_node_types(config).values():
        check_gpus_and_cpus(spec_id, node_type)


@pytest.mark.parametrize("spec_id", TYPED_SPEC_IDS)
def test_worker_node_type_offers_the_accelerator_type_review_3(spec_id):
    """Review #3: with acceleratorType T the worker node type carries `accelerator_type:T`."""
    config = derived_or_fail(spec_id)
    gpu_type = SPECS[spec_id].spec.resources.accelerator_type
    for node_type in worker_node_types(config).values():
        check_accelerator_type(gpu_type, node_type)


# ---------------------------------------------------------------- the judge can say no
# Known inputs built from a rendered RayCluster with explicit edits, so they
# stay known-good or known-bad whatever the render does.

SANE = "example-llama-8b-1gpu"  # one L4 GPU per pod, resources.cpu set


def strip_declared_resources(group: dict) -> dict:
    """No custom Ray resources: neither the group's `resources` (KubeRay >= 1.5) nor rayStartParams'."""
    group.pop("resources", None)
    group.setdefault("rayStartParams", {}).pop("resources", None)
    return group


def test_sanity_judge_rejects_a_worker_group_without_cpu():
    """Known bad: no num-cpus, no CPU request or limit -> `_get_num_cpus` raises (review #1)."""
    raycluster = build_raycluster(rendered_rayservice(SANE))
    group = strip_declared_resources(worker_groups(raycluster)[0])
    group["rayStartParams"]["num-cpus"] = "8"
    _derive_autoscaling_config_from_ray_cr(copy.deepcopy(raycluster))  # with num-cpus: fine
    group["rayStartParams"].pop("num-cpus")
    for container in group["template"]["spec"]["containers"]:
        for kind in ("requests", "limits"):
            container.get("resources", {}).get(kind, {}).pop("cpu", None)
    with pytest.raises(ValueError, match="failed to detect `CPU` resources for group workers"):
        _derive_autoscaling_config_from_ray_cr(raycluster)


def test_sanity_accelerator_type_check_tells_declared_from_missing():
    """The review #3 check fails without the resource and passes once the group declares it.

    The declaration uses the single-quoted JSON that KubeRay itself writes into
    rayStartParams.resources (common/pod.go addWellKnownAcceleratorResources,
    v1.5.1) and that both KubeRay's getResourcesMap (trims quotes) and Ray's
    _get_custom_resources (drops the first and last character) read.
    """
    raycluster = build_raycluster(rendered_rayservice(SANE))
    group = strip_declared_resources(worker_groups(raycluster)[0])
    (node_type,) = worker_node_types(_derive_autoscaling_config_from_ray_cr(copy.deepcopy(raycluster))).values()
    with pytest.raises(AssertionError, match="review #3"):
        check_accelerator_type("L4", node_type)
    group["rayStartParams"]["resources"] = "'{\"accelerator_type:L4\": 1}'"
    (node_type,) = worker_node_types(_derive_autoscaling_config_from_ray_cr(raycluster)).values()
    check_accelerator_type("L4", node_type)
    check_gpus_and_cpus(SANE, node_type)
