"""ModelDeployment -> KubeRay RayService (ray.io/v1), pure.

KubeRay owns the Ray pods: this only describes the cluster (a head that hosts
no replicas, one worker group sized from the runtime's placement) and the
Serve application, which imports the same builder `shardserve run` uses.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import yaml

from shardserve.api_keys import KEYS_FILE_ENV
from shardserve.builder import APP_IMPORT_PATH, PVC_MOUNT_ROOT, RAY_SERVE_ENV, build_proxy_timeout, parse_quantity
from shardserve.placement import Placement, placement_for
from shardserve.spec import ModelDeployment
from shardserve.tracing import build_tracing_env, compute_tracing_settings

from shardserve_operator import naming
from shardserve_operator.render.options import RenderOptions

RAY_API_VERSION = "ray.io/v1"
HEAD_CONTAINER = "ray-head"
WORKER_CONTAINER = "ray-worker"
WORKER_GROUP = "workers"
GPU_RESOURCE = "nvidia.com/gpu"
MODEL_VOLUME = "models"
# The serving.apiKeySecret, mounted read-only: one file per key. The kubelet
# updates the files in place when the Secret changes, and the ingress re-reads
# them (shardserve.api_keys), so keys rotate without a restart.
API_KEYS_VOLUME = "api-keys"
API_KEYS_MOUNT = "/etc/shardserve/api-keys"
# KubeRay's default head ports; "serve" is the name KubeRay looks for, both for
# its serve Service and for the proxy check (HAProxy here) in worker readiness probes.
HEAD_PORTS = (("gcs-server", 6379), ("dashboard", 8265), ("client", 10001))
SERVE_PORT_NAME = "serve"
# Ray's autoscaler default; with autoscaling the spec's downscale delay applies.
DEFAULT_IDLE_TIMEOUT_SECONDS = 60
# Logical CPUs a worker pod needs beyond its vLLM bundles: ray.serve.llm adds
# the replica actor's CPU (which also serves HTTP) to the first bundle.
REPLICA_ACTOR_CPUS = 1


def build_app_args(md: ModelDeployment) -> dict[str, Any]:
    """The ModelDeployment document passed to build_app: what `shardserve run` would load."""
    metadata = {"name": md.metadata.name}
    if md.metadata.namespace:
        metadata["namespace"] = md.metadata.namespace
    return {
        "apiVersion": md.api_version,
        "kind": md.kind,
        "metadata": metadata,
        "spec": md.spec.model_dump(by_alias=True, exclude_none=True, mode="json"),
    }


def build_serve_config(md: ModelDeployment) -> str:
    """serveConfigV2: one application on "/", plus the proxy's HTTP options."""
    serving = md.spec.serving
    config = {
        "http_options": {
            "host": "0.0.0.0",
            "port": serving.port,
            "request_timeout_s": build_proxy_timeout(md),
        },
        "applications": [
            {
                "name": md.metadata.name,
                "import_path": APP_IMPORT_PATH,
                "route_prefix": "/",
                "args": build_app_args(md),
            }
        ],
    }
    return yaml.safe_dump(config, sort_keys=False)


def _model_claim(md: ModelDeployment) -> Optional[str]:
    model = md.spec.model
    return model.location.strip("/").split("/")[0] if model.scheme == "pvc" else None


def _container(name: str, image: str, md: ModelDeployment, ports: list[dict], resources: dict) -> dict[str, Any]:
    container: dict[str, Any] = {"name": name, "image": image, "ports": ports,
                                 "env": [{"name": k, "value": v} for k, v in sorted(RAY_SERVE_ENV.items())]}
    if resources:
        container["resources"] = resources
    secret = md.spec.model.credentials_secret
    if secret:
        container["envFrom"] = [{"secretRef": {"name": secret}}]
    if md.spec.serving.api_key_secret:
        container["env"].append({"name": KEYS_FILE_ENV, "value": API_KEYS_MOUNT})
        container["volumeMounts"] = [{"name": API_KEYS_VOLUME, "mountPath": API_KEYS_MOUNT, "readOnly": True}]
    # spec.telemetry.tracing, as every Ray process reads it (Serve's proxy and replicas, vLLM).
    tracing_env = build_tracing_env(compute_tracing_settings(md.spec.telemetry, {}))
    if tracing_env:
        container["env"].extend({"name": k, "value": v} for k, v in sorted(tracing_env.items()))
    return container


def _pod_volumes(md: ModelDeployment) -> list[dict[str, Any]]:
    secret = md.spec.serving.api_key_secret
    if not secret:
        return []
    return [{"name": API_KEYS_VOLUME, "secret": {"secretName": secret, "defaultMode": 0o444}}]


def _serve_port(md: ModelDeployment) -> dict[str, Any]:
    return {"name": SERVE_PORT_NAME, "containerPort": md.spec.serving.port, "protocol": "TCP"}


def build_head_group(md: ModelDeployment, options: RenderOptions) -> dict[str, Any]:
    ports = [{"name": name, "containerPort": port, "protocol": "TCP"} for name, port in HEAD_PORTS]
    resources = {
        "requests": {"cpu": options.head_cpu, "memory": options.head_memory},
        "limits": {"memory": options.head_memory},
    }
    head = _container(HEAD_CONTAINER, md.spec.image or options.default_image, md, ports + [_serve_port(md)], resources)
    pod_spec: dict[str, Any] = {"containers": [head]}
    volumes = _pod_volumes(md)
    if volumes:
        pod_spec["volumes"] = volumes
    return {
        # No logical CPUs: model replicas never schedule on the head.
        # The dashboard listens on the pod network because KubeRay drives Serve
        # through it; only the NetworkPolicy's KubeRay rule and the token reach it.
        "rayStartParams": {"num-cpus": "0", "dashboard-host": "0.0.0.0"},
        "template": {
            "metadata": {"labels": naming.build_pod_labels(md.metadata.name)},
            "spec": pod_spec,
        },
    }


def _worker_resources(md: ModelDeployment, placement: Placement) -> dict[str, Any]:
    res = md.spec.resources
    requests: dict[str, str] = {}
    limits: dict[str, str] = {}
    if res.accelerator == "cpu":
        # vLLM's CPU workers pin one core block each (builder.cpu_threads_bind).
        requests["cpu"] = res.cpu or str(placement.accelerators_per_pod)
    else:
        gpus = str(placement.accelerators_per_pod)
        requests[GPU_RESOURCE] = limits[GPU_RESOURCE] = gpus
        if res.cpu:
            requests["cpu"] = res.cpu
    if res.memory:
        requests["memory"] = limits["memory"] = res.memory
    out: dict[str, Any] = {"requests": requests}
    if limits:
        out["limits"] = limits
    return out


def _worker_start_params(md: ModelDeployment, placement: Placement) -> dict[str, str]:
    res = md.spec.resources
    extra = REPLICA_ACTOR_CPUS
    if res.accelerator == "cpu":
        # Logical CPUs may exceed the cores requested: Ray only counts them.
        return {"num-cpus": str(placement.accelerators_per_pod + extra)}
    if res.cpu:
        # KubeRay would take num-cpus from the request; keep room for the actors.
        return {"num-cpus": str(max(extra, math.ceil(parse_quantity(res.cpu))))}
    return {}  # Ray counts the node's cores


def _worker_bounds(md: ModelDeployment, placement: Placement) -> tuple[int, int, int]:
    """(replicas, minReplicas, maxReplicas) in pods: model replicas x pods per replica."""
    spec = md.spec
    pods = placement.pods_per_replica
    if spec.autoscaling is None:
        fixed = spec.effective_replicas * pods
        return fixed, fixed, fixed
    scaling = spec.autoscaling
    return spec.effective_replicas * pods, scaling.min_replicas * pods, scaling.max_replicas * pods


def build_worker_group(md: ModelDeployment, options: RenderOptions, placement: Placement) -> dict[str, Any]:
    res = md.spec.resources
    worker = _container(WORKER_CONTAINER, md.spec.image or options.default_image, md,
                        [_serve_port(md)], _worker_resources(md, placement))
    pod_spec: dict[str, Any] = {"containers": [worker]}
    volumes = _pod_volumes(md)
    claim = _model_claim(md)
    if claim:
        volumes.append({"name": MODEL_VOLUME, "persistentVolumeClaim": {"claimName": claim, "readOnly": True}})
        worker.setdefault("volumeMounts", []).append(
            {"name": MODEL_VOLUME, "mountPath": f"{PVC_MOUNT_ROOT}/{claim}", "readOnly": True})
    if volumes:
        pod_spec["volumes"] = volumes
    if res.node_selector:
        pod_spec["nodeSelector"] = dict(res.node_selector)
    tolerations = [dict(t) for t in res.tolerations]
    if res.accelerator == GPU_RESOURCE:
        tolerations.insert(0, {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"})
    if tolerations:
        pod_spec["tolerations"] = tolerations
    replicas, low, high = _worker_bounds(md, placement)
    return {
        "groupName": WORKER_GROUP,
        "replicas": replicas,
        "minReplicas": low,
        "maxReplicas": high,
        "rayStartParams": _worker_start_params(md, placement),
        "template": {"metadata": {"labels": naming.build_pod_labels(md.metadata.name)}, "spec": pod_spec},
    }


def build_rayservice(md: ModelDeployment, options: RenderOptions) -> dict[str, Any]:
    placement = placement_for(md.spec)
    scaling = md.spec.autoscaling
    idle = int(scaling.downscale_delay_seconds) if scaling else DEFAULT_IDLE_TIMEOUT_SECONDS
    name = md.metadata.name
    return {
        "apiVersion": RAY_API_VERSION,
        "kind": "RayService",
        "metadata": {
            "name": naming.rayservice_name(name),
            "labels": naming.build_labels(name, naming.COMPONENT_RAYSERVICE),
        },
        "spec": {
            # A changed cluster spec starts a new RayCluster and switches
            # traffic once it serves; Serve-only changes apply in place.
            "upgradeStrategy": {"type": "NewCluster"},
            # The head runs no replicas, so it must not receive traffic.
            "excludeHeadPodFromServeSvc": True,
            "serveConfigV2": build_serve_config(md),
            "rayClusterConfig": {
                "rayVersion": options.ray_version,
                # Ray's token authentication (Ray >= 2.52): KubeRay generates
                # the token Secret, hands it to every Ray process and uses it
                # for its own dashboard calls. The dashboard and job API run
                # code for anyone who reaches them; with this they need the token.
                "authOptions": {"mode": "token"},
                # Ray's autoscaler adds worker pods when Serve asks for more
                # replicas than fit, within the worker group's bounds.
                "enableInTreeAutoscaling": True,
                "autoscalerOptions": {"upscalingMode": "Default", "idleTimeoutSeconds": idle},
                "headGroupSpec": build_head_group(md, options),
                "workerGroupSpecs": [build_worker_group(md, options, placement)],
            },
        },
    }
