"""Rendering: golden files, the KubeRay CRD contract, Kubernetes' own schemas, sizing rules.

Regenerate the golden files after an intended change with
SHARDSERVE_UPDATE_GOLDEN=1 pytest tests/operator/test_operator_render.py
and review the diff.
"""

from __future__ import annotations

import copy
import importlib
import inspect
import os
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest

from shardserve.api.contract import APP_IMPORT_PATH, PVC_MOUNT_ROOT
from shardserve.api.kuberay import build_head_service_ports, check_group_resources, find_duplicate_ports
from shardserve.api.placement import placement_for
from shardserve.api.serve_options import PROXY_TIMEOUT_MARGIN_S
from shardserve.api.validation import load_file, parse_deployment
from shardserve.api.yaml_loading import safe_load
from shardserve.serve.llm_config import build_llm_config
from shardserve_operator import naming
from shardserve_operator.hashing import compute_hash, read_hash
from shardserve_operator.render import RenderOptions, render_children, render_yaml
from shardserve_operator.render.rayservice import HEAD_PORTS
from tests.kuberay_crd import rayservice_v1_schema

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
GOLDEN = HERE / "golden"
CASES = {
    "tiny-cpu": ROOT / "manifests" / "examples" / "tiny-cpu.yaml",
    "llama-8b-1gpu": HERE / "cases" / "llama-8b-1gpu.yaml",
    "llama-70b-tp4-pp2": HERE / "cases" / "llama-70b-tp4-pp2.yaml",
    "pipeline-across-nodes": HERE / "cases" / "pipeline-across-nodes.yaml",
}
OWNER_UID = "00000000-0000-4000-8000-000000000001"
K8S_VERSION = kubernetes_validate.latest_version()


def render_case(name: str, **kwargs):
    return render_children(load_file(CASES[name]), RenderOptions(), owner_uid=OWNER_UID, **kwargs)


def by_kind(objects):
    return {obj["kind"]: obj for obj in objects}


# ---------------------------------------------------------------- golden files

@pytest.mark.parametrize("case", sorted(CASES))
def test_rendered_objects_match_golden_file(case):
    rendered = render_yaml(render_case(case))
    golden = GOLDEN / f"{case}.yaml"
    if os.environ.get("SHARDSERVE_UPDATE_GOLDEN"):
        golden.write_text(rendered)
    assert golden.exists(), f"no golden file {golden.name}; run with SHARDSERVE_UPDATE_GOLDEN=1"
    assert rendered == golden.read_text(), f"{case} renders differently from {golden.name}"


def test_golden_files_are_not_stale():
    assert sorted(p.stem for p in GOLDEN.glob("*.yaml")) == sorted(CASES)


def test_rendering_is_deterministic_and_hash_tracks_content():
    first, second = render_case("llama-70b-tp4-pp2"), render_case("llama-70b-tp4-pp2")
    assert render_yaml(first) == render_yaml(second)
    for obj in first:
        assert read_hash(obj) == compute_hash(obj)
    md = load_file(CASES["llama-70b-tp4-pp2"])
    changed = md.model_copy(update={"spec": md.spec.model_copy(update={"replicas": 3})})
    after = by_kind(render_children(changed, owner_uid=OWNER_UID))
    before = by_kind(first)
    assert read_hash(after["RayService"]) != read_hash(before["RayService"])
    assert read_hash(after["Service"]) == read_hash(before["Service"])  # a replica count is not the Service's business


# ---------------------------------------------------------------- the serve config

def serve_config(rayservice):
    return safe_load(rayservice["spec"]["serveConfigV2"])


@pytest.mark.parametrize("case", sorted(CASES))
def test_serve_config_args_round_trip_through_the_runtime_parser(case):
    md = load_file(CASES[case])
    rayservice = by_kind(render_children(md))["RayService"]
    config = serve_config(rayservice)
    (app,) = config["applications"]
    assert app["import_path"] == APP_IMPORT_PATH
    assert app["route_prefix"] == "/"
    assert app["name"] == md.metadata.name
    parsed = parse_deployment(app["args"])
    assert parsed.metadata.name == md.metadata.name
    # The replica builds the same engine and deployment from the args as from the whole spec,
    # with the replica count or bounds from the deployment's options in the Serve config.
    built, whole = build_llm_config(parsed, builtin_dir="/m"), build_llm_config(md, builtin_dir="/m")
    (options,) = app["deployments"]
    counts = ("num_replicas", "autoscaling_config")
    built["deployment_config"] = {k: v for k, v in built["deployment_config"].items() if k not in counts}
    built["deployment_config"].update({k: v for k, v in options.items() if k in counts})
    assert built == whole
    assert parsed.metadata.namespace == md.metadata.namespace
    assert config["http_options"] == {
        "host": "0.0.0.0",
        "port": md.spec.serving.port,
        # The proxy waits a little past the ingress, whose 504 is OpenAI-shaped.
        "request_timeout_s": md.spec.serving.request_timeout_seconds + PROXY_TIMEOUT_MARGIN_S,
    }


def test_import_path_names_the_runtime_app_builder():
    module, _, attr = APP_IMPORT_PATH.partition(":")
    builder = getattr(importlib.import_module(module), attr)
    assert list(inspect.signature(builder).parameters) == ["args"]


# ---------------------------------------------------------------- sizing rules

@pytest.mark.parametrize(
    "case, replicas, low, high, gpus, num_cpus, strategy",
    [
        ("tiny-cpu", 1, 1, 1, None, "2", "STRICT_PACK"),  # 1 vLLM worker + the replica actor (it serves HTTP)
        ("llama-8b-1gpu", 1, 1, 4, "1", "8", "STRICT_PACK"),
        # No resources.cpu: a core per GPU worker and one for the replica actor (review #1).
        ("llama-70b-tp4-pp2", 2, 2, 2, "8", "9", "STRICT_PACK"),
        ("pipeline-across-nodes", 2, 0, 4, "8", "96", "PACK"),  # 2 pods per replica
    ],
)
def test_worker_group_is_sized_from_the_placement(case, replicas, low, high, gpus, num_cpus, strategy):
    md = load_file(CASES[case])
    assert placement_for(md.spec).strategy == strategy
    cluster = by_kind(render_children(md))["RayService"]["spec"]["rayClusterConfig"]
    (group,) = cluster["workerGroupSpecs"]
    assert (group["replicas"], group["minReplicas"], group["maxReplicas"]) == (replicas, low, high)
    # Ray resources in the group's map only: KubeRay refuses a group that also sets them as start params.
    assert group["resources"]["CPU"] == num_cpus
    assert group["resources"].get("GPU") == gpus
    assert check_group_resources(group) is None
    resources = group["template"]["spec"]["containers"][0]["resources"]
    assert resources["requests"].get("nvidia.com/gpu") == gpus
    assert resources.get("limits", {}).get("nvidia.com/gpu") == gpus
    assert cluster["enableInTreeAutoscaling"] is True
    # The head holds no replica, even on a node whose GPUs the runtime can see (review #15).
    assert cluster["headGroupSpec"]["resources"] == {"CPU": "0", "GPU": "0"}
    assert check_group_resources(cluster["headGroupSpec"]) is None
    # HAProxy on every node forwards requests straight to the model replicas.
    for pod in (cluster["headGroupSpec"], group):
        assert {"name": "RAY_SERVE_ENABLE_HA_PROXY", "value": "1"} in pod["template"]["spec"]["containers"][0]["env"]


def test_gpu_workers_tolerate_the_gpu_taint_and_keep_spec_tolerations():
    rayservice = by_kind(render_case("llama-70b-tp4-pp2"))["RayService"]
    pod = rayservice["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["template"]["spec"]
    assert pod["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
        {"key": "dedicated", "operator": "Equal", "value": "llm", "effect": "NoSchedule"},
    ]
    head = rayservice["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]
    assert "tolerations" not in head and "nodeSelector" not in head


def test_pvc_source_is_mounted_read_only_where_the_builder_looks():
    md = load_file(CASES["llama-70b-tp4-pp2"])
    pod = by_kind(render_children(md))["RayService"]["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["template"]["spec"]
    (volume,) = [v for v in pod["volumes"] if "persistentVolumeClaim" in v]
    assert volume["persistentVolumeClaim"] == {"claimName": "model-store", "readOnly": True}
    (mount,) = [m for m in pod["containers"][0]["volumeMounts"] if m["name"] == volume["name"]]
    assert mount == {"name": volume["name"], "mountPath": f"{PVC_MOUNT_ROOT}/model-store", "readOnly": True}
    from shardserve.serve.llm_config import resolve_model_source

    assert resolve_model_source(md.spec.model).startswith(mount["mountPath"] + "/")


def test_api_key_secret_is_mounted_read_only_in_every_ray_pod_and_named_by_env():
    from shardserve.api.contract import KEYS_FILE_ENV

    rayservice = by_kind(render_case("llama-70b-tp4-pp2"))["RayService"]
    cluster = rayservice["spec"]["rayClusterConfig"]
    pods = [cluster["headGroupSpec"]["template"]["spec"]] + [g["template"]["spec"] for g in cluster["workerGroupSpecs"]]
    for pod in pods:
        (volume,) = [v for v in pod["volumes"] if "secret" in v]
        assert volume["secret"]["secretName"] == "llm-keys"
        (container,) = pod["containers"]
        (mount,) = [m for m in container["volumeMounts"] if m["name"] == volume["name"]]
        assert mount["readOnly"] is True
        assert {"name": KEYS_FILE_ENV, "value": mount["mountPath"]} in container["env"]
    # No key is ever written into the Serve config.
    assert "SHARDSERVE_API_KEYS" not in rayservice["spec"]["serveConfigV2"]
    plain = by_kind(render_case("llama-8b-1gpu"))["RayService"]["spec"]["rayClusterConfig"]
    assert "volumes" not in plain["headGroupSpec"]["template"]["spec"]


def test_credentials_secret_reaches_every_ray_container_and_image_falls_back_to_default():
    options = RenderOptions(default_image="example.com/ray:test")
    rayservice = by_kind(render_children(load_file(CASES["llama-8b-1gpu"]), options))["RayService"]
    cluster = rayservice["spec"]["rayClusterConfig"]
    containers = [cluster["headGroupSpec"]["template"]["spec"]["containers"][0],
                  cluster["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]]
    for container in containers:
        assert container["envFrom"] == [{"secretRef": {"name": "hf-token"}}]
        assert container["image"] == "example.com/ray:test"
        assert {"name": "serve", "containerPort": 8000, "protocol": "TCP"} in container["ports"]
    spec_image = by_kind(render_case("llama-70b-tp4-pp2"))["RayService"]
    worker = spec_image["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    assert worker["image"] == "registry.example.com/shardserve:0.1.0-cuda"


def test_kuberay_switches_are_used():
    spec = by_kind(render_case("tiny-cpu"))["RayService"]["spec"]
    assert spec["excludeHeadPodFromServeSvc"] is True
    # Scale to zero keeps the head's proxy in the serve Service: it receives the waking request (review #5).
    assert by_kind(render_case("pipeline-across-nodes"))["RayService"]["spec"]["excludeHeadPodFromServeSvc"] is False
    assert spec["upgradeStrategy"] == {"type": "NewCluster"}
    assert spec["rayClusterConfig"]["autoscalerOptions"]["idleTimeoutSeconds"] == 60
    scaled = by_kind(render_case("llama-8b-1gpu"))["RayService"]["spec"]
    # Fixed: KubeRay hashes it, and the spec's downscale delay is applied by the Serve policy.
    assert scaled["rayClusterConfig"]["autoscalerOptions"]["idleTimeoutSeconds"] == 60


# ---------------------------------------------------------------- Service, Ingress, metadata

def test_service_selects_serving_pods_and_follows_the_active_cluster():
    plain = by_kind(render_case("tiny-cpu"))["Service"]
    assert plain["spec"]["selector"] == {naming.LABEL_MODEL_DEPLOYMENT: "tiny", "ray.io/serve": "true"}
    pinned = by_kind(render_case("tiny-cpu", active_cluster="tiny-abcde"))["Service"]
    assert pinned["spec"]["selector"]["ray.io/cluster"] == "tiny-abcde"
    assert read_hash(pinned) != read_hash(plain)
    pod_labels = by_kind(render_case("tiny-cpu"))["RayService"]["spec"]["rayClusterConfig"]["workerGroupSpecs"][0][
        "template"]["metadata"]["labels"]
    assert pod_labels[naming.LABEL_MODEL_DEPLOYMENT] == "tiny"
    port = plain["spec"]["ports"][0]
    assert port["port"] == port["targetPort"] == 8000


@pytest.mark.parametrize("case", sorted(CASES))
def test_only_the_openai_port_is_reachable_through_service_and_ingress(case):
    """The dashboard, job API, client and GCS ports stay inside the cluster network."""
    objects = by_kind(render_case(case))
    serve_port = load_file(CASES[case]).spec.serving.port
    ray_ports = {port for _, port in HEAD_PORTS}
    service_ports = objects["Service"]["spec"]["ports"]
    assert [(p["port"], p["targetPort"]) for p in service_ports] == [(serve_port, serve_port)]
    assert serve_port not in ray_ports
    ingress = objects.get("Ingress")
    if ingress:
        backends = [path["backend"]["service"] for rule in ingress["spec"]["rules"] for path in rule["http"]["paths"]]
        assert backends == [{"name": objects["Service"]["metadata"]["name"], "port": {"number": serve_port}}]
    cluster = objects["RayService"]["spec"]["rayClusterConfig"]
    assert cluster["authOptions"] == {"mode": "token"}
    # The head takes traffic only to wake a deployment scaled to zero.
    scaling = load_file(CASES[case]).spec.autoscaling
    assert objects["RayService"]["spec"]["excludeHeadPodFromServeSvc"] is not (scaling and scaling.min_replicas == 0)
    # KubeRay's head Service: every named head port plus metrics 8080; a duplicate is refused (review #4).
    head_ports = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]["ports"]
    assert find_duplicate_ports(build_head_service_ports(head_ports)) == []


def test_ingress_only_when_set_and_routes_to_the_service():
    assert "Ingress" not in by_kind(render_case("tiny-cpu"))
    objects = by_kind(render_case("llama-8b-1gpu"))
    ingress = objects["Ingress"]
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": objects["Service"]["metadata"]["name"], "port": {"number": 8000}}
    assert ingress["spec"]["tls"] == [{"hosts": ["llm.example.com"], "secretName": "llm-tls"}]
    assert ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-read-timeout"] == "600"


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_child_has_labels_owner_and_hash(case):
    md = load_file(CASES[case])
    for obj in render_case(case):
        meta = obj["metadata"]
        assert meta["labels"][naming.LABEL_MANAGED_BY] == naming.MANAGER
        assert meta["labels"][naming.LABEL_MODEL_DEPLOYMENT] == md.metadata.name
        assert meta["ownerReferences"] == [naming.build_owner_reference(md.metadata.name, OWNER_UID)]
        assert meta["ownerReferences"][0]["controller"] is True
        assert len(read_hash(obj)) == 20
    for obj in render_children(md):  # no cluster: no owner to point at
        assert "ownerReferences" not in obj["metadata"]


# ---------------------------------------------------------------- schemas

@pytest.mark.parametrize("case", sorted(CASES))
def test_core_objects_validate_against_kubernetes_schemas(case):
    for obj in render_case(case):
        if obj["apiVersion"] in ("v1", "networking.k8s.io/v1"):
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def test_kubernetes_schema_check_rejects_a_typo():
    service = copy.deepcopy(by_kind(render_case("tiny-cpu"))["Service"])
    service["spec"]["selectr"] = service["spec"].pop("selector")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(service, K8S_VERSION, strict=True)


def _strict(schema):
    """openAPIV3Schema -> JSON Schema that rejects unknown fields (API servers prune them silently)."""
    if isinstance(schema, list):
        return [_strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: _strict(value) for key, value in schema.items()}
    if out.get("nullable") and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    if "properties" in out and "additionalProperties" not in out \
            and not out.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    return out


@pytest.fixture(scope="module")
def rayservice_schema():
    schema = rayservice_v1_schema("cannot check rendered RayServices against it")
    return jsonschema.Draft7Validator(_strict(schema))


@pytest.mark.parametrize("case", sorted(CASES))
def test_rayservice_satisfies_kuberay_crd_with_unknown_fields_rejected(case, rayservice_schema):
    rayservice = by_kind(render_case(case))["RayService"]
    errors = sorted(rayservice_schema.iter_errors(rayservice), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{'.'.join(map(str, e.path))}: {e.message}" for e in errors)


@pytest.mark.parametrize("path, typo", [
    (("spec",), "excludeHeadPodFromServeService"),
    (("spec", "rayClusterConfig"), "enableInTreeAutoscaler"),
    (("spec", "rayClusterConfig", "workerGroupSpecs", 0), "minReplica"),
])
def test_crd_check_rejects_a_typo(path, typo, rayservice_schema):
    rayservice = copy.deepcopy(by_kind(render_case("tiny-cpu"))["RayService"])
    node = rayservice
    for part in path:
        node = node[part]
    node[typo] = True
    assert list(rayservice_schema.iter_errors(rayservice)), f"a field named {typo} passed the CRD check"
