"""Read-only view of a ModelDeployment's children and of what they depend on (one GET each)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

from shardserve_operator import naming
from shardserve_operator.checks import RAYSERVICE_CRD_NAME
from shardserve_operator.kube import CUSTOM_RESOURCE_DEFINITION, INGRESS, MODEL_DEPLOYMENT, RAYSERVICE, SERVICE, Kind, Kube

_NAMERS = {RAYSERVICE: naming.rayservice_name, SERVICE: naming.service_name, INGRESS: naming.ingress_name}


@dataclass(frozen=True)
class Observed:
    """Children as the API server returned them (None: absent)."""

    objects: Mapping[Kind, Optional[dict[str, Any]]] = field(default_factory=dict)

    def get(self, kind: Kind) -> Optional[dict[str, Any]]:
        return self.objects.get(kind)

    @property
    def rayservice(self) -> Optional[dict[str, Any]]:
        return self.get(RAYSERVICE)


def child_name(kind: Kind, md_name: str) -> str:
    return _NAMERS[kind](md_name)


def observe_children(kube: Kube, namespace: str, md_name: str) -> Observed:
    return Observed({kind: kube.get(kind, namespace, child_name(kind, md_name)) for kind in _NAMERS})


def read_model_deployment(kube: Kube, namespace: str, name: str) -> Optional[dict[str, Any]]:
    return kube.get(MODEL_DEPLOYMENT, namespace, name)


def read_rayservice_crd(kube: Kube) -> Optional[dict[str, Any]]:
    """KubeRay's RayService CustomResourceDefinition; None when it is not installed."""
    return kube.get(CUSTOM_RESOURCE_DEFINITION, None, RAYSERVICE_CRD_NAME)


def find_active_cluster(rayservice: Optional[Mapping[str, Any]]) -> Optional[str]:
    """The RayCluster the RayService serves from (KubeRay's activeServiceStatus)."""
    if not rayservice:
        return None
    active = (rayservice.get("status") or {}).get("activeServiceStatus") or {}
    return active.get("rayClusterName") or None
