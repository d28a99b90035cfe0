"""spec.lora in a cluster: the claims adapters live on are mounted where the
replica's loader reads them, the adapters' credentials reach the Ray
containers, downloads get the cache volume, and the pod passes Kubernetes'
own schema."""

from __future__ import annotations

import kubernetes_validate

from shardserve.api.contract import PVC_MOUNT_ROOT
from shardserve.api.sources import mounted_path
from shardserve.api.validation import parse_deployment
from shardserve.api.yaml_loading import safe_load
from shardserve_operator.render import RenderOptions, render_children
from shardserve_operator.render.rayservice import CACHE_MOUNT
from tests.operator.test_operator_render import K8S_VERSION, by_kind
from tests.operator.test_render_for_kuberay import _with

PVC_LORA = {
    "adapters": [{"name": "sql", "source": "pvc://adapters/sql"},
                 {"name": "chat", "source": "pvc://weights/lora/chat"},
                 {"name": "hub", "source": "hf://org/hub-lora"}],
    "dynamicSource": "pvc://adapters/tenants",
    "credentialsSecret": "adapter-creds",
}


def _rayservice(doc: dict) -> dict:
    return by_kind(render_children(parse_deployment(doc), RenderOptions()))["RayService"]


def _worker_pod(rayservice: dict) -> dict:
    pod = rayservice["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["template"]
    kubernetes_validate.validate(
        {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "w"}, "template": pod}, K8S_VERSION, strict=True)
    return pod


def test_adapter_claims_are_mounted_where_the_loader_reads_them():
    doc = _with("llama-8b-1gpu", model={"id": "llama", "source": "pvc://weights/llama-8b"}, lora=PVC_LORA)
    pod = _worker_pod(_rayservice(doc))
    claims = {v["persistentVolumeClaim"]["claimName"]: v["name"] for v in pod["spec"]["volumes"]
              if "persistentVolumeClaim" in v}
    assert set(claims) == {"weights", "adapters"}  # the model's claim once, though an adapter lives on it too
    mounts = {m["name"]: m for m in pod["spec"]["containers"][0]["volumeMounts"]}
    for claim, volume in claims.items():
        assert mounts[volume] == {"name": volume, "mountPath": f"{PVC_MOUNT_ROOT}/{claim}", "readOnly": True}
    mounted = [m["mountPath"] for m in mounts.values()]
    for source in ("pvc://adapters/sql", "pvc://weights/lora/chat", "pvc://adapters/tenants/acme"):
        assert any(str(mounted_path(source)).startswith(path + "/") for path in mounted), source


def test_adapter_credentials_and_downloads_reach_the_ray_containers():
    doc = _with("llama-8b-1gpu", model={"id": "llama", "source": "pvc://weights/llama-8b", "credentialsSecret": "hf"},
                lora=PVC_LORA)
    rayservice = _rayservice(doc)
    pod = _worker_pod(rayservice)
    worker = pod["spec"]["containers"][0]
    assert worker["envFrom"] == [{"secretRef": {"name": "hf"}}, {"secretRef": {"name": "adapter-creds"}}]
    head = rayservice["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert head["envFrom"] == worker["envFrom"]
    # The model is read in place, but an hf:// adapter is downloaded: into the cache volume.
    assert {"name": "HF_HOME", "value": f"{CACHE_MOUNT}/huggingface"} in worker["env"]
    # The Serve app's args carry spec.lora to the replicas unchanged.
    (app,) = safe_load(rayservice["spec"]["serveConfigV2"])["applications"]
    assert parse_deployment(app["args"]).spec.lora == parse_deployment(doc).spec.lora


def test_without_lora_nothing_changes():
    pod = _worker_pod(_rayservice(_with("llama-8b-1gpu")))
    assert [v["name"] for v in pod["spec"].get("volumes", []) if v["name"].startswith("adapters-")] == []
