"""Every example, as the operator renders it: valid Kubernetes objects of the expected size.

The examples are admitted by the CRD in test_crd.py; here they go through the
operator's render functions (what `shardserve render FILE` prints).
"""

from __future__ import annotations

from pathlib import Path

import kubernetes_validate
import pytest

from shardserve.api.validation import load_file
from shardserve.api.yaml_loading import safe_load, safe_load_all
from shardserve_operator.render import RenderOptions, render_children
from tests.cluster.admission import schema_errors
from tests.kuberay_crd import rayservice_v1_schema

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "manifests" / "examples").glob("*.yaml"))
K8S_VERSION = kubernetes_validate.latest_version()
OWNER_UID = "00000000-0000-4000-8000-00000000e2e0"


def rendered(name: str) -> dict[str, dict]:
    md = load_file(ROOT / "manifests" / "examples" / name)
    return {obj["kind"]: obj for obj in render_children(md, RenderOptions(), owner_uid=OWNER_UID)}


def worker_group(objects: dict[str, dict]) -> dict:
    (group,) = objects["RayService"]["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    return group


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_renders_valid_kubernetes_objects(path):
    objects = rendered(path.name)
    assert {"RayService", "Service"} <= set(objects)
    for kind in ("Service", "Ingress"):
        if kind in objects:
            kubernetes_validate.validate(objects[kind], K8S_VERSION, strict=True)


@pytest.fixture(scope="module")
def rayservice_schema():
    return rayservice_v1_schema("cannot check rendered RayServices against it")


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_rayservice_satisfies_kuberay_crd(path, rayservice_schema):
    rayservice = rendered(path.name)["RayService"]
    assert schema_errors(rayservice_schema, rayservice) == []
    rayservice["spec"]["rayClusterConfig"]["enableInTreeAutoscaler"] = True  # a typo must not pass
    assert schema_errors(rayservice_schema, rayservice)


def test_tiny_cpu_runs_on_one_cpu_pod():
    group = worker_group(rendered("tiny-cpu.yaml"))
    (container,) = group["template"]["spec"]["containers"]
    assert (group["replicas"], group["minReplicas"], group["maxReplicas"]) == (1, 1, 1)
    assert "nvidia.com/gpu" not in container["resources"].get("limits", {})


def test_llama_8b_takes_one_gpu_per_replica():
    objects = rendered("llama-8b-1gpu.yaml")
    group = worker_group(objects)
    (container,) = group["template"]["spec"]["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert (group["replicas"], group["minReplicas"], group["maxReplicas"]) == (1, 1, 1)
    assert container["envFrom"] == [{"secretRef": {"name": "hf-token"}}]
    assert "Ingress" not in objects


def test_llama_70b_fills_an_8_gpu_node_per_replica_autoscales_and_has_an_ingress():
    objects = rendered("llama-70b-tp4-pp2.yaml")
    group = worker_group(objects)
    (container,) = group["template"]["spec"]["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "8"
    assert (group["replicas"], group["minReplicas"], group["maxReplicas"]) == (1, 1, 4)
    assert objects["RayService"]["spec"]["rayClusterConfig"]["enableInTreeAutoscaling"] is True
    ingress = objects["Ingress"]["spec"]
    assert ingress["rules"][0]["host"] == "llm.example.com" and ingress["ingressClassName"] == "nginx"
    assert ingress["tls"] == [{"hosts": ["llm.example.com"], "secretName": "llm-example-com-tls"}]
    serve = safe_load(objects["RayService"]["spec"]["serveConfigV2"])
    spec = serve["applications"][0]["args"]["spec"]
    assert spec["parallelism"]["tensor"] == 4 and spec["parallelism"]["pipeline"] == 2


def test_render_command_prints_each_example(capsys, monkeypatch):
    from shardserve.cli import main

    for name in [k for k in list(__import__("os").environ) if k.startswith("SHARDSERVE_")]:
        monkeypatch.delenv(name)
    for path in EXAMPLES:
        assert main(["render", str(path)]) == 0
        kinds = [doc["kind"] for doc in safe_load_all(capsys.readouterr().out) if doc]
        assert kinds[:2] == ["RayService", "Service"]
