"""The kinds of object the operator reads, writes and watches, and their API paths (pure)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Optional

from shardserve.api.crd import PLURAL
from shardserve.api.spec import API_GROUP, API_VERSION, KIND


@dataclass(frozen=True)
class Kind:
    api_version: str
    kind: str
    plural: str
    namespaced: bool = True

    @property
    def group(self) -> str:
        return self.api_version.rpartition("/")[0]

    @property
    def version(self) -> str:
        return self.api_version.rpartition("/")[2]

    def path(self, namespace: str, name: Optional[str] = None, subresource: Optional[str] = None) -> str:
        root = f"/apis/{self.api_version}" if self.group else f"/api/{self.api_version}"
        path = f"{root}/namespaces/{namespace}/{self.plural}" if self.namespaced else f"{root}/{self.plural}"
        if name:
            path += f"/{name}"
        if subresource:
            path += f"/{subresource}"
        return path


# Named once, in the API contract.
MODEL_DEPLOYMENT = Kind(f"{API_GROUP}/{API_VERSION}", KIND, PLURAL)
RAYSERVICE = Kind("ray.io/v1", "RayService", "rayservices")
SERVICE = Kind("v1", "Service", "services")
INGRESS = Kind("networking.k8s.io/v1", "Ingress", "ingresses")
EVENT = Kind("v1", "Event", "events")
LEASE = Kind("coordination.k8s.io/v1", "Lease", "leases")
# Read and watched, never created: KubeRay creates the RayClusters of a
# RayService; the operator only patches their worker bounds.
RAYCLUSTER = Kind("ray.io/v1", "RayCluster", "rayclusters")
PERSISTENT_VOLUME_CLAIM = Kind("v1", "PersistentVolumeClaim", "persistentvolumeclaims")
CUSTOM_RESOURCE_DEFINITION = Kind("apiextensions.k8s.io/v1", "CustomResourceDefinition",
                                  "customresourcedefinitions", namespaced=False)

# Every kind the operator may create for a ModelDeployment, in apply order.
CHILD_KINDS = (RAYSERVICE, SERVICE, INGRESS)
# Every kind whose events lead to a reconcile of the ModelDeployment it serves.
WATCHED_KINDS = CHILD_KINDS + (RAYCLUSTER,)


def kind_of(obj: Mapping[str, Any]) -> Kind:
    for kind in CHILD_KINDS + (MODEL_DEPLOYMENT, EVENT, LEASE):
        if kind.api_version == obj.get("apiVersion") and kind.kind == obj.get("kind"):
            return kind
    raise ValueError(f"unknown kind {obj.get('apiVersion')}/{obj.get('kind')}")
