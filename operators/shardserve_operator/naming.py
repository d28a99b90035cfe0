"""Every name, label, selector and owner reference the operator puts on objects.

Children carry the ModelDeployment's name (the spec caps it at 40 characters
so KubeRay's suffixes still fit in 63). Pod labels stay the same across
RayCluster upgrades so that selectors keep matching the new cluster's pods.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Optional

from shardserve.api.spec import API_GROUP
from shardserve_operator.kinds import INGRESS, MODEL_DEPLOYMENT, RAYSERVICE, SERVICE, Kind

APP_NAME = "shardserve"
MANAGER = "shardserve-operator"

LABEL_NAME = "app.kubernetes.io/name"
LABEL_INSTANCE = "app.kubernetes.io/instance"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_MODEL_DEPLOYMENT = f"{API_GROUP}/model-deployment"
ANNOTATION_RENDERED_HASH = f"{API_GROUP}/rendered-hash"

# KubeRay's own pod labels. `ray.io/serve` is "true" on worker pods of a
# RayService (their readiness probe checks the Serve proxy) and on the head
# only while its proxy is healthy and excludeHeadPodFromServeSvc is off.
RAY_SERVE_LABEL = "ray.io/serve"
RAY_CLUSTER_LABEL = "ray.io/cluster"
RAY_NODE_TYPE_LABEL = "ray.io/node-type"

COMPONENT_RAYSERVICE = "rayservice"
COMPONENT_SERVICE = "openai-endpoint"
COMPONENT_INGRESS = "ingress"


def rayservice_name(md_name: str) -> str:
    return md_name


def service_name(md_name: str) -> str:
    # KubeRay names its own Services <rayservice>-head-svc and -serve-svc.
    return md_name


def ingress_name(md_name: str) -> str:
    return md_name


_NAMERS = {RAYSERVICE: rayservice_name, SERVICE: service_name, INGRESS: ingress_name}


def child_name(kind: Kind, md_name: str) -> str:
    return _NAMERS[kind](md_name)


def build_labels(md_name: str, component: str) -> dict[str, str]:
    """Labels of a child object; LABEL_MANAGED_BY is what the operator watches children by."""
    return {
        LABEL_NAME: APP_NAME,
        LABEL_INSTANCE: md_name,
        LABEL_COMPONENT: component,
        LABEL_MANAGED_BY: MANAGER,
        LABEL_MODEL_DEPLOYMENT: md_name,
    }


def build_pod_labels(md_name: str) -> dict[str, str]:
    """Labels on Ray pod templates; KubeRay adds ray.io/* labels of its own."""
    return {LABEL_NAME: APP_NAME, LABEL_INSTANCE: md_name, LABEL_MODEL_DEPLOYMENT: md_name}


def build_serve_selector(md_name: str, active_cluster: Optional[str] = None) -> dict[str, str]:
    """Pods that answer on the OpenAI port: this deployment's pods whose Serve proxy is up.

    During a zero-downtime upgrade KubeRay runs a pending RayCluster next to
    the active one, and the pending cluster's workers turn ready before its
    Serve application runs. KubeRay's own serve Service therefore also selects
    ray.io/cluster=<active cluster>; pinning to the cluster the RayService
    reports as active does the same here, and the pin follows the switch on
    the reconcile that the RayService's status change triggers.
    """
    selector = {LABEL_MODEL_DEPLOYMENT: md_name, RAY_SERVE_LABEL: "true"}
    if active_cluster:
        selector[RAY_CLUSTER_LABEL] = active_cluster
    return selector


def build_worker_selector(md_name: str) -> str:
    """Label selector (string form) of the worker pods, for the scale subresource."""
    return f"{LABEL_MODEL_DEPLOYMENT}={md_name},{RAY_NODE_TYPE_LABEL}=worker"


def build_owner_reference(md_name: str, uid: str) -> dict[str, Any]:
    return {
        "apiVersion": MODEL_DEPLOYMENT.api_version,
        "kind": MODEL_DEPLOYMENT.kind,
        "name": md_name,
        "uid": uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def build_endpoint(md_name: str, namespace: Optional[str], port: int) -> str:
    """OpenAI base URL inside the cluster."""
    host = service_name(md_name) + (f".{namespace}.svc" if namespace else "")
    return f"http://{host}:{port}/v1"


def find_controller(obj: Mapping[str, Any]) -> Optional[Mapping[str, Any]]:
    """The controller owner reference of an object, if any."""
    refs: Iterable[Mapping[str, Any]] = obj.get("metadata", {}).get("ownerReferences") or ()
    for ref in refs:
        if ref.get("controller"):
            return ref
    return None


def find_owner_name(obj: Mapping[str, Any]) -> Optional[str]:
    """Name of the ModelDeployment controlling a child, if one does."""
    ref = find_controller(obj)
    if ref and ref.get("kind") == MODEL_DEPLOYMENT.kind and ref.get("apiVersion", "").startswith(MODEL_DEPLOYMENT.group + "/"):
        return ref.get("name")
    return None


def is_controlled_by(obj: Mapping[str, Any], uid: str) -> bool:
    ref = find_controller(obj)
    return ref is not None and ref.get("uid") == uid
