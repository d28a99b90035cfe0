"""Read-only view of a ModelDeployment's children and of what they depend on (one GET each)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Optional

from shardserve.api.kuberay import find_cluster_names
from shardserve_operator import naming
from shardserve_operator.checks import RAYSERVICE_CRD_NAME
from shardserve_operator.kinds import (
    CHILD_KINDS,
    CUSTOM_RESOURCE_DEFINITION,
    MODEL_DEPLOYMENT,
    PERSISTENT_VOLUME_CLAIM,
    RAYCLUSTER,
    RAYSERVICE,
    Kind,
)
from shardserve_operator.kube import Kube


@dataclass(frozen=True)
class Observed:
    """Children as the API server returned them (None: absent), and the RayService's RayClusters."""

    objects: Mapping[Kind, Optional[dict[str, Any]]] = field(default_factory=dict)
    # name -> RayCluster, for the active and pending clusters the RayService
    # names that exist and belong to it (KubeRay creates them).
    clusters: Mapping[str, dict[str, Any]] = field(default_factory=dict)

    def get(self, kind: Kind) -> Optional[dict[str, Any]]:
        return self.objects.get(kind)

    @property
    def rayservice(self) -> Optional[dict[str, Any]]:
        return self.get(RAYSERVICE)


def is_cluster_of(cluster: Mapping[str, Any], rayservice: Mapping[str, Any], md_name: str) -> bool:
    """A RayCluster KubeRay made for this RayService, carrying this ModelDeployment's label."""
    uid = (rayservice.get("metadata") or {}).get("uid")
    labels = (cluster.get("metadata") or {}).get("labels") or {}
    return bool(uid) and naming.is_controlled_by(cluster, str(uid)) and labels.get(naming.LABEL_MODEL_DEPLOYMENT) == md_name


def observe_clusters(kube: Kube, namespace: str, md_name: str,
                     rayservice: Optional[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """The active and pending RayClusters the RayService's status names, when they exist and are its own."""
    if not rayservice:
        return {}
    clusters = {}
    for name in find_cluster_names(rayservice):
        if name and name not in clusters:
            cluster = kube.get(RAYCLUSTER, namespace, name)
            if cluster is not None and is_cluster_of(cluster, rayservice, md_name):
                clusters[name] = cluster
    return clusters


def observe_children(kube: Kube, namespace: str, md_name: str, owner_uid: Optional[str] = None) -> Observed:
    """Every child by name; with `owner_uid`, also the RayClusters of the RayService that uid controls."""
    objects = {kind: kube.get(kind, namespace, naming.child_name(kind, md_name)) for kind in CHILD_KINDS}
    rayservice = objects[RAYSERVICE]
    ours = rayservice if rayservice and owner_uid and naming.is_controlled_by(rayservice, owner_uid) else None
    return Observed(objects, observe_clusters(kube, namespace, md_name, ours))


def read_model_deployment(kube: Kube, namespace: str, name: str) -> Optional[dict[str, Any]]:
    return kube.get(MODEL_DEPLOYMENT, namespace, name)


def read_claim(kube: Kube, namespace: str, name: str) -> Optional[dict[str, Any]]:
    return kube.get(PERSISTENT_VOLUME_CLAIM, namespace, name)


def read_crd(kube: Kube, name: str) -> Optional[dict[str, Any]]:
    """A CustomResourceDefinition; None when it is not installed."""
    return kube.get(CUSTOM_RESOURCE_DEFINITION, None, name)


def read_rayservice_crd(kube: Kube) -> Optional[dict[str, Any]]:
    """KubeRay's RayService CustomResourceDefinition; None when it is not installed."""
    return kube.get(CUSTOM_RESOURCE_DEFINITION, None, RAYSERVICE_CRD_NAME)


def find_active_cluster(rayservice: Optional[Mapping[str, Any]]) -> Optional[str]:
    """The RayCluster the RayService serves from (KubeRay's activeServiceStatus)."""
    return find_cluster_names(rayservice)[0]
