"""ModelDeployment -> KubeRay RayService (ray.io/v1), pure.

KubeRay owns the Ray pods: this only describes the cluster (a head that hosts
no replicas, one worker group sized from the runtime's placement) and the
Serve application, which imports the same builder `shardserve run` uses.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
from typing import Any, Optional

import yaml

from shardserve.api.contract import CHAT_TEMPLATE_DIR, KEYS_FILE_ENV, PVC_MOUNT_ROOT, RAY_SERVE_ENV
from shardserve.api.gpu_products import build_gpu_affinity
from shardserve.api.placement import Placement, placement_for
from shardserve.api.quantity import parse_quantity
from shardserve.api.serve_config import build_application_config
from shardserve.api.serve_options import build_proxy_timeout
from shardserve.api.spec import ModelDeployment
from shardserve.api.tracing_env import build_tracing_env, compute_tracing_settings
from shardserve_operator import naming
from shardserve_operator.render.options import RenderOptions

RAY_API_VERSION = "ray.io/v1"
HEAD_CONTAINER = "ray-head"
WORKER_CONTAINER = "ray-worker"
WORKER_GROUP = "workers"
GPU_RESOURCE = "nvidia.com/gpu"
MODEL_VOLUME = "models"
# Claims holding LoRA adapters (spec.lora), other than the model's: adapters-0, adapters-1, ...
ADAPTER_VOLUME_PREFIX = "adapters-"
CHAT_TEMPLATE_VOLUME = "chat-template"
# Downloaded weights (hf://, s3://, gs://): Ray Serve LLM and vLLM download
# into the Hugging Face cache on every node of a replica, so the cache is a
# volume of the pod, not the container's writable layer; it survives
# container restarts.
CACHE_VOLUME = "model-cache"
CACHE_MOUNT = "/var/cache/shardserve"
DOWNLOADED_SCHEMES = ("hf", "s3", "gs")
# vLLM's workers and NCCL exchange tensors through /dev/shm, which a
# container runtime caps at 64 MiB; a memory-backed volume lifts the cap
# (its use counts against the pod's memory).
SHM_VOLUME = "dshm"
# Ray pods meet the Pod Security Standard "restricted": the runtime image
# runs as uid 1000 (Ray's images' `ray` user). KubeRay copies the Ray
# container's securityContext to the init container it adds
# (common/pod.go v1.5.1:338) and takes the autoscaler's from
# autoscalerOptions (pod.go:649-650).
RAY_UID = 1000
CONTAINER_SECURITY = {
    "runAsNonRoot": True,
    "runAsUser": RAY_UID,
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}
# A change to Serve's HTTP options (port, request timeout) must restart Ray:
# Serve refuses to update them on a running instance. Their hash on the pod
# templates makes KubeRay start a new cluster for such a change.
ANNOTATION_HTTP_OPTIONS = "shardserve.dev/serve-http-options"
ANNOTATION_TOLERATIONS = "shardserve.dev/tolerations"
# The serving.apiKeySecret, mounted read-only: one file per key. The kubelet
# updates the files in place when the Secret changes, and the ingress re-reads
# them (shardserve.serve.http.api_keys), so keys rotate without a restart.
API_KEYS_VOLUME = "api-keys"
API_KEYS_MOUNT = "/etc/shardserve/api-keys"
# KubeRay's default head ports; "serve" is the name KubeRay looks for, both for
# its serve Service and for the proxy check (HAProxy here) in worker readiness probes.
HEAD_PORTS = (("gcs-server", 6379), ("dashboard", 8265), ("client", 10001))
SERVE_PORT_NAME = "serve"
# How long Ray's autoscaler keeps a worker pod no replica uses (its default).
# The spec's downscale delay is applied by the Serve policy before a replica
# goes; this is only the pod's grace after that. KubeRay hashes it, so it is
# fixed: a spec value here would start a new cluster on every edit.
IDLE_TIMEOUT_SECONDS = 60
# Logical CPUs a worker pod needs beyond its vLLM bundles: ray.serve.llm adds
# the replica actor's CPU (which also serves HTTP) to the first bundle.
REPLICA_ACTOR_CPUS = 1
# KubeRay deletes the old cluster this long after switching traffic to the
# new one (its own default is 60 s); streams that started on the old cluster
# get the whole request timeout to finish.
MIN_CLUSTER_DELETION_DELAY_SECONDS = 60


def build_http_options(md: ModelDeployment) -> dict[str, Any]:
    return {"host": "0.0.0.0", "port": md.spec.serving.port, "request_timeout_s": build_proxy_timeout(md)}


def build_serve_config(md: ModelDeployment) -> str:
    """serveConfigV2: one application on "/", plus the proxy's HTTP options."""
    config = {
        "http_options": build_http_options(md),
        "applications": [build_application_config(md)],
    }
    return yaml.safe_dump(config, sort_keys=False)


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]


def _template_annotations(md: ModelDeployment, *, worker: bool) -> dict[str, str]:
    annotations = {ANNOTATION_HTTP_OPTIONS: _digest(build_http_options(md))}
    if worker and md.spec.resources.tolerations:
        # KubeRay 1.6 leaves tolerations out of its change hash (utils/util.go
        # v1.6.2:651-659); their digest here keeps a toleration edit a rollout.
        annotations[ANNOTATION_TOLERATIONS] = _digest(md.spec.resources.tolerations)
    return annotations


def _claim(source: str) -> Optional[str]:
    scheme, _, location = source.partition("://")
    return location.strip("/").split("/")[0] if scheme == "pvc" else None


def _model_claim(md: ModelDeployment) -> Optional[str]:
    return _claim(md.spec.model.source)


def _adapter_sources(md: ModelDeployment) -> list[str]:
    """The adapters' sources (listed ones, and the dynamic prefix)."""
    lora = md.spec.lora
    if lora is None:
        return []
    return [a.source for a in lora.adapters] + ([lora.dynamic_source] if lora.dynamic_source else [])


def _adapter_claims(md: ModelDeployment) -> list[str]:
    """Claims holding adapters, besides the model's own (mounted once)."""
    claims = [_claim(source) for source in _adapter_sources(md)]
    return sorted({c for c in claims if c is not None} - {_model_claim(md)})


def _credential_secrets(md: ModelDeployment) -> list[str]:
    """Secrets whose keys become the Ray containers' environment: the model's,
    then the adapters' (when they have their own)."""
    secrets = [md.spec.model.credentials_secret]
    if md.spec.lora is not None:
        secrets.append(md.spec.lora.credentials_secret)
    return list(dict.fromkeys(s for s in secrets if s))


def _container(name: str, image: str, md: ModelDeployment, ports: list[dict[str, Any]],
               resources: dict[str, Any]) -> dict[str, Any]:
    container: dict[str, Any] = {"name": name, "image": image, "ports": ports,
                                 "env": [{"name": k, "value": v} for k, v in sorted(RAY_SERVE_ENV.items())],
                                 "securityContext": copy.deepcopy(CONTAINER_SECURITY)}
    if resources:
        container["resources"] = resources
    secrets = _credential_secrets(md)
    if secrets:
        container["envFrom"] = [{"secretRef": {"name": secret}} for secret in secrets]
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
        # No logical CPUs or GPUs: model replicas never schedule on the head,
        # even where the runtime would show it a node's GPUs.
        "resources": {"CPU": "0", "GPU": "0"},
        # The dashboard listens on the pod network because KubeRay drives Serve
        # through it; only the NetworkPolicy's KubeRay rule and the token reach it.
        "rayStartParams": {"dashboard-host": "0.0.0.0"},
        "template": {
            "metadata": {"labels": naming.build_pod_labels(md.metadata.name),
                         "annotations": _template_annotations(md, worker=False)},
            "spec": pod_spec,
        },
    }


def _worker_cpu_request(md: ModelDeployment, placement: Placement) -> str:
    """Cores a worker pod requests: resources.cpu, else one per worker plus the replica actor's."""
    res = md.spec.resources
    if res.cpu:
        return res.cpu
    if res.accelerator == "cpu":
        # vLLM's CPU workers pin one core block each (builder.cpu_threads_bind).
        return str(placement.accelerators_per_pod)
    return str(placement.accelerators_per_pod + REPLICA_ACTOR_CPUS)


def _worker_resources(md: ModelDeployment, placement: Placement) -> dict[str, Any]:
    res = md.spec.resources
    requests: dict[str, str] = {"cpu": _worker_cpu_request(md, placement)}
    limits: dict[str, str] = {}
    if res.accelerator != "cpu":
        requests[GPU_RESOURCE] = limits[GPU_RESOURCE] = str(placement.accelerators_per_pod)
    if res.memory:
        requests["memory"] = limits["memory"] = res.memory
    if md.spec.model.cache_size and md.spec.model.scheme in DOWNLOADED_SCHEMES:
        requests["ephemeral-storage"] = md.spec.model.cache_size
    out: dict[str, Any] = {"requests": requests}
    if limits:
        out["limits"] = limits
    return out


def build_worker_ray_resources(md: ModelDeployment, placement: Placement) -> dict[str, str]:
    """The worker group's Ray resources, declared so that Ray's autoscaler can plan with them.

    Without CPUs it can detect, the autoscaler fails to start (and with it
    the head pod); a GPU type must be a resource of the node type, or no
    replica asking for it is ever placed on a node the autoscaler adds.
    """
    res = md.spec.resources
    if res.accelerator == "cpu":
        # Logical CPUs may exceed the cores requested: Ray only counts them.
        return {"CPU": str(placement.accelerators_per_pod + REPLICA_ACTOR_CPUS)}
    cpus = max(REPLICA_ACTOR_CPUS, math.ceil(parse_quantity(_worker_cpu_request(md, placement))))
    resources = {"CPU": str(cpus), "GPU": str(placement.accelerators_per_pod)}
    if res.accelerator_type:
        # What Ray Serve LLM adds to every bundle (0.001 each) for accelerator_type.
        resources[f"accelerator_type:{res.accelerator_type}"] = "1"
    return resources


def _worker_bounds(md: ModelDeployment, placement: Placement) -> tuple[int, int, int]:
    """(replicas, minReplicas, maxReplicas) in pods: model replicas x pods per replica."""
    spec = md.spec
    pods = placement.pods_per_replica
    if spec.autoscaling is None:
        fixed = spec.effective_replicas * pods
        return fixed, fixed, fixed
    scaling = spec.autoscaling
    return spec.effective_replicas * pods, scaling.min_replicas * pods, scaling.max_replicas * pods


def _add_model_volumes(md: ModelDeployment, worker: dict[str, Any], volumes: list[dict[str, Any]]) -> None:
    model = md.spec.model
    mounts = worker.setdefault("volumeMounts", [])
    claim = _model_claim(md)
    if claim:
        volumes.append({"name": MODEL_VOLUME, "persistentVolumeClaim": {"claimName": claim, "readOnly": True}})
        mounts.append({"name": MODEL_VOLUME, "mountPath": f"{PVC_MOUNT_ROOT}/{claim}", "readOnly": True})
    if md.spec.resources.accelerator != "cpu":
        volumes.append({"name": SHM_VOLUME, "emptyDir": {"medium": "Memory"}})
        mounts.append({"name": SHM_VOLUME, "mountPath": "/dev/shm"})
    for index, adapter_claim in enumerate(_adapter_claims(md)):
        name = f"{ADAPTER_VOLUME_PREFIX}{index}"
        volumes.append({"name": name, "persistentVolumeClaim": {"claimName": adapter_claim, "readOnly": True}})
        mounts.append({"name": name, "mountPath": f"{PVC_MOUNT_ROOT}/{adapter_claim}", "readOnly": True})
    downloads_adapters = any(s.partition("://")[0] in DOWNLOADED_SCHEMES for s in _adapter_sources(md))
    if model.scheme in DOWNLOADED_SCHEMES or downloads_adapters:
        volumes.append({"name": CACHE_VOLUME,
                        "emptyDir": {"sizeLimit": model.cache_size} if model.cache_size else {}})
        mounts.append({"name": CACHE_VOLUME, "mountPath": CACHE_MOUNT})
        worker["env"].append({"name": "HF_HOME", "value": f"{CACHE_MOUNT}/huggingface"})
    template = md.spec.chat.template if md.spec.chat else None
    if template is not None and template.config_map is not None:
        # vLLM reads the template from this file when the replica starts.
        ref = template.config_map
        volumes.append({"name": CHAT_TEMPLATE_VOLUME,
                        "configMap": {"name": ref.name, "items": [{"key": ref.key, "path": ref.key}]}})
        mounts.append({"name": CHAT_TEMPLATE_VOLUME, "mountPath": CHAT_TEMPLATE_DIR, "readOnly": True})
    if not mounts:
        del worker["volumeMounts"]


def build_worker_group(md: ModelDeployment, options: RenderOptions, placement: Placement) -> dict[str, Any]:
    res = md.spec.resources
    worker = _container(WORKER_CONTAINER, md.spec.image or options.default_image, md,
                        [_serve_port(md)], _worker_resources(md, placement))
    pod_spec: dict[str, Any] = {"containers": [worker]}
    volumes = _pod_volumes(md)
    _add_model_volumes(md, worker, volumes)
    if volumes:
        pod_spec["volumes"] = volumes
    if res.node_selector:
        pod_spec["nodeSelector"] = dict(res.node_selector)
    label = options.gpu_product_label
    if res.accelerator_type and label and label not in res.node_selector:
        # Only nodes whose GPUs Ray reports as this type; a nodeSelector on
        # the same label replaces it.
        pod_spec["affinity"] = build_gpu_affinity(res.accelerator_type, label)
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
        # Ray resources here, not in rayStartParams: KubeRay refuses a group
        # that sets both, and turns these into num-cpus, num-gpus and --resources.
        "resources": build_worker_ray_resources(md, placement),
        "rayStartParams": {},
        "template": {
            "metadata": {"labels": naming.build_pod_labels(md.metadata.name),
                         "annotations": _template_annotations(md, worker=True)},
            "spec": pod_spec,
        },
    }


def _keeps_head_in_serve_service(md: ModelDeployment) -> bool:
    """With a floor of zero replicas the head's proxy is what receives the request that wakes the model.

    Ray Serve's HAProxy on the head falls back to the head's Serve proxy when
    no replica runs (serve/_private/haproxy_templates.py, fallback_server);
    that proxy holds the request while Serve starts a replica and Ray's
    autoscaler adds a worker pod for it.
    """
    scaling = md.spec.autoscaling
    return scaling is not None and scaling.min_replicas == 0


def build_rayservice(md: ModelDeployment, options: RenderOptions) -> dict[str, Any]:
    placement = placement_for(md.spec)
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
            # The old cluster stays until the requests it holds have had their time.
            "rayClusterDeletionDelaySeconds": max(MIN_CLUSTER_DELETION_DELAY_SECONDS,
                                                  math.ceil(build_proxy_timeout(md))),
            # The head runs no replicas, so it receives traffic only when it
            # must wake a deployment scaled to zero.
            "excludeHeadPodFromServeSvc": not _keeps_head_in_serve_service(md),
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
                "autoscalerOptions": {"upscalingMode": "Default", "idleTimeoutSeconds": IDLE_TIMEOUT_SECONDS,
                                      "securityContext": copy.deepcopy(CONTAINER_SECURITY)},
                "headGroupSpec": build_head_group(md, options),
                "workerGroupSpecs": [build_worker_group(md, options, placement)],
            },
        },
    }
