"""The render against what KubeRay and Ray do with it: one test per item of the cluster review it fixes."""

from __future__ import annotations

import copy
from typing import get_args

import pytest
from ray._private.accelerators.nvidia_gpu import NvidiaGPUAcceleratorManager

from shardserve.api.gpu_products import GPU_PRODUCT_LABEL, GPU_PRODUCTS
from shardserve.api.kuberay import strip_hash_ignored
from shardserve.api.serve_options import build_proxy_timeout
from shardserve.api.spec import GpuType
from shardserve.api.validation import load_file, parse_deployment
from shardserve.api.yaml_loading import safe_load
from shardserve_operator.render import RenderOptions, is_paused, render_children
from shardserve_operator.render.rayservice import ANNOTATION_HTTP_OPTIONS, CACHE_MOUNT, CACHE_VOLUME
from tests.operator.test_operator_render import CASES, by_kind


def _doc(case: str) -> dict:
    md = load_file(CASES[case])
    return {"apiVersion": md.api_version, "kind": md.kind, "metadata": {"name": md.metadata.name},
            "spec": md.spec.model_dump(by_alias=True, exclude_none=True, mode="json")}


def _with(case: str, **spec_changes) -> dict:
    doc = copy.deepcopy(_doc(case))
    for dotted, value in spec_changes.items():
        node = doc["spec"]
        *parents, leaf = dotted.split("__")
        for part in parents:
            node = node.setdefault(part, {})
        if value is None:
            node.pop(leaf, None)
        else:
            node[leaf] = value
    return doc


def _cluster(doc: dict, options: RenderOptions = RenderOptions()) -> dict:
    return by_kind(render_children(parse_deployment(doc), options))["RayService"]["spec"]["rayClusterConfig"]


def _worker_pod(doc: dict, options: RenderOptions = RenderOptions()) -> dict:
    return _cluster(doc, options)["workerGroupSpecs"][0]["template"]["spec"]


# ---------------------------------------------------------------- review #3 and #14: GPU types

def test_gpu_type_is_a_ray_resource_of_the_worker_group():
    """Ray Serve LLM asks every bundle for accelerator_type:<T>; the node type must offer it."""
    group = _cluster(_doc("llama-70b-tp4-pp2"))["workerGroupSpecs"][0]
    assert group["resources"]["accelerator_type:H100"] == "1"
    without = _cluster(_with("llama-70b-tp4-pp2", resources__acceleratorType=None))["workerGroupSpecs"][0]
    assert not [key for key in without["resources"] if key.startswith("accelerator_type:")]


@pytest.mark.parametrize("gpu_type", get_args(GpuType))
def test_every_gpu_type_pins_worker_pods_to_nodes_whose_gpus_ray_names_so(gpu_type):
    """Each product's NVML name, as GPU Feature Discovery writes it, is one Ray detects as this type."""
    pod = _worker_pod(_with("llama-70b-tp4-pp2", resources__acceleratorType=gpu_type))
    (term,) = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    (expression,) = term["matchExpressions"]
    assert expression["key"] == GPU_PRODUCT_LABEL and expression["operator"] == "In"
    assert expression["values"] == list(GPU_PRODUCTS[gpu_type])
    for product in expression["values"]:
        detected = NvidiaGPUAcceleratorManager._gpu_name_to_accelerator_type(product.replace("-", " "))
        # A100-40G/80G are Ray's names for A100s of that memory; Ray itself reports both as A100.
        family, _, memory = gpu_type.partition("-") if gpu_type.startswith("A100-") else (gpu_type, "", "")
        assert detected.replace(" ", "-") == family, f"{product} is detected as {detected}, not {gpu_type}"
        assert memory.removesuffix("G") in product if memory else True


def test_a_node_selector_on_the_product_label_replaces_the_affinity():
    doc = _with("llama-70b-tp4-pp2", resources__nodeSelector={GPU_PRODUCT_LABEL: "NVIDIA-H100-80GB-HBM3"})
    pod = _worker_pod(doc)
    assert "affinity" not in pod and pod["nodeSelector"] == {GPU_PRODUCT_LABEL: "NVIDIA-H100-80GB-HBM3"}
    # Clusters without GPU Feature Discovery's labels switch it off for every deployment.
    assert "affinity" not in _worker_pod(_doc("llama-70b-tp4-pp2"), RenderOptions(gpu_product_label=""))


# ---------------------------------------------------------------- review #5 and #6: zero

def test_replicas_zero_pauses_without_a_rayservice():
    paused = parse_deployment(_with("llama-8b-1gpu", autoscaling=None, replicas=0))
    assert is_paused(paused)
    kinds = [obj["kind"] for obj in render_children(paused)]
    assert kinds == ["Service", "Ingress"]
    assert not is_paused(parse_deployment(_with("pipeline-across-nodes")))  # minReplicas 0 is scale to zero


def test_scale_to_zero_lets_the_worker_group_reach_zero_and_keeps_the_head_serving():
    spec = by_kind(render_children(load_file(CASES["pipeline-across-nodes"])))["RayService"]["spec"]
    assert spec["excludeHeadPodFromServeSvc"] is False
    group = spec["rayClusterConfig"]["workerGroupSpecs"][0]
    assert group["minReplicas"] == 0


# ---------------------------------------------------------------- review #10: the weight cache

@pytest.mark.parametrize("source", ["hf://org/model", "s3://bucket/model", "gs://bucket/model"])
def test_downloaded_weights_go_to_a_cache_volume_at_hf_home(source):
    doc = _with("llama-8b-1gpu", model__source=source, model__cacheSize="40Gi")
    pod = _worker_pod(doc)
    (volume,) = [v for v in pod["volumes"] if v["name"] == CACHE_VOLUME]
    assert volume["emptyDir"] == {"sizeLimit": "40Gi"}
    (container,) = pod["containers"]
    assert {"name": CACHE_VOLUME, "mountPath": CACHE_MOUNT} in container["volumeMounts"]
    assert {"name": "HF_HOME", "value": f"{CACHE_MOUNT}/huggingface"} in container["env"]
    assert container["resources"]["requests"]["ephemeral-storage"] == "40Gi"


def test_cache_without_a_size_has_no_limit_and_requests_nothing():
    pod = _worker_pod(_with("llama-8b-1gpu", model__cacheSize=None))
    (volume,) = [v for v in pod["volumes"] if v["name"] == CACHE_VOLUME]
    assert volume["emptyDir"] == {}
    assert "ephemeral-storage" not in pod["containers"][0]["resources"]["requests"]


@pytest.mark.parametrize("source", ["pvc://claim/model", "file:///models/model"])
def test_weights_read_in_place_need_no_cache(source):
    pod = _worker_pod(_with("llama-8b-1gpu", model__source=source, model__cacheSize=None))
    assert CACHE_VOLUME not in [v["name"] for v in pod.get("volumes", [])]
    assert "HF_HOME" not in [e["name"] for e in pod["containers"][0]["env"]]


# ---------------------------------------------------------------- review #12: changes that need a new cluster

def test_a_change_to_serves_http_options_changes_what_kuberay_hashes():
    """Serve refuses new HTTP options on a running instance, so they must start a new cluster."""
    before = _cluster(_doc("llama-8b-1gpu"))
    after = _cluster(_with("llama-8b-1gpu", serving__requestTimeoutSeconds=1200))
    assert strip_hash_ignored(before) != strip_hash_ignored(after)
    for cluster in (before, after):
        for group in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]:
            assert ANNOTATION_HTTP_OPTIONS in group["template"]["metadata"]["annotations"]


def test_a_change_of_replica_bounds_is_invisible_to_kuberays_hash():
    """Why the operator writes bounds onto the RayCluster itself (review #2)."""
    before = _cluster(_doc("llama-8b-1gpu"))
    after = _cluster(_with("llama-8b-1gpu", autoscaling__maxReplicas=8))
    assert before["workerGroupSpecs"][0]["maxReplicas"] != after["workerGroupSpecs"][0]["maxReplicas"]
    assert strip_hash_ignored(before) == strip_hash_ignored(after)
    assert strip_hash_ignored(before, (1, 6, 2)) == strip_hash_ignored(after, (1, 6, 2))


def test_the_old_cluster_outlives_the_longest_request():
    md = load_file(CASES["pipeline-across-nodes"])
    spec = by_kind(render_children(md))["RayService"]["spec"]
    assert spec["rayClusterDeletionDelaySeconds"] >= build_proxy_timeout(md)
    short = parse_deployment(_with("llama-8b-1gpu", serving__requestTimeoutSeconds=5))
    assert by_kind(render_children(short))["RayService"]["spec"]["rayClusterDeletionDelaySeconds"] == 60


# ---------------------------------------------------------------- what restarts replicas

def _app_config(doc: dict):
    from ray.serve.schema import ServeDeploySchema

    rayservice = by_kind(render_children(parse_deployment(doc)))["RayService"]
    (app,) = ServeDeploySchema.model_validate(safe_load(rayservice["spec"]["serveConfigV2"])).applications
    return app


def _code_version(doc: dict) -> str:
    from ray.serve._private.deploy_utils import get_app_code_version

    return get_app_code_version(_app_config(doc))


@pytest.mark.parametrize("change", [
    {"autoscaling": None, "replicas": 3},
    {"autoscaling__minReplicas": 0},
    {"autoscaling__maxReplicas": 9},
    {"ingress__host": "other.example.com"},
    {"resources__tolerations": [{"key": "k", "operator": "Exists"}]},
    {"model__cacheSize": "80Gi"},
    {"telemetry": {"tracing": {"endpoint": "http://otel:4318"}}},
], ids=["fixed-count", "min", "max", "ingress", "tolerations", "cache", "tracing"])
def test_scaling_and_cluster_only_edits_keep_serves_code_version(change):
    """Serve restarts every replica when the code version changes; a scale must not."""
    base = _with("llama-8b-1gpu", autoscaling=None, replicas=1) if "replicas" in change else _doc("llama-8b-1gpu")
    assert _code_version(_with("llama-8b-1gpu", **change)) == _code_version(base)


@pytest.mark.parametrize("change", [
    {"engine__maxModelLen": 4096},
    {"serving__maxOngoingRequests": 32},
    {"autoscaling__targetQueueDepth": 2},
], ids=["engine", "limits", "policy"])
def test_edits_the_replicas_read_change_the_code_version(change):
    assert _code_version(_with("llama-8b-1gpu", **change)) != _code_version(_doc("llama-8b-1gpu"))


def test_replica_count_and_bounds_reach_serve_as_deployment_options():
    fixed = _app_config(_with("llama-8b-1gpu", autoscaling=None, replicas=3))
    (options,) = fixed.deployments
    assert (options.name, options.num_replicas) == ("llm", 3)
    scaled = _app_config(_with("llama-8b-1gpu", autoscaling__minReplicas=0, autoscaling__maxReplicas=6))
    (options,) = scaled.deployments
    assert options.autoscaling_config["min_replicas"] == 0 and options.autoscaling_config["max_replicas"] == 6


# ---------------------------------------------------------------- review #19: Pod Security Standards

# The "restricted" profile's checks (Kubernetes staging/src/k8s.io/pod-security-admission/policy:
# check_restrictedVolumes.go, check_allowPrivilegeEscalation.go, check_capabilities_restricted.go,
# check_runAsNonRoot.go, check_seccompProfile_restricted.go).
RESTRICTED_VOLUME_TYPES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                           "projected", "secret"}


def _meets_restricted(context: dict) -> None:
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"]["drop"] == ["ALL"] and not context["capabilities"].get("add")
    assert context["runAsNonRoot"] is True and context.get("runAsUser", 1) != 0
    assert context["seccompProfile"]["type"] in ("RuntimeDefault", "Localhost")


@pytest.mark.parametrize("case", sorted(CASES))
def test_ray_pods_and_the_autoscaler_meet_the_restricted_pod_security_standard(case):
    cluster = _cluster(_doc(case))
    for group in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]:
        pod = group["template"]["spec"]
        for container in pod["containers"]:
            _meets_restricted(container["securityContext"])
        for volume in pod.get("volumes", []):
            assert set(volume) - {"name"} <= RESTRICTED_VOLUME_TYPES, volume
    _meets_restricted(cluster["autoscalerOptions"]["securityContext"])


def test_gpu_workers_get_a_shared_memory_volume():
    pod = _worker_pod(_doc("llama-70b-tp4-pp2"))
    (volume,) = [v for v in pod["volumes"] if v.get("emptyDir", {}).get("medium") == "Memory"]
    assert {"name": volume["name"], "mountPath": "/dev/shm"} in pod["containers"][0]["volumeMounts"]
