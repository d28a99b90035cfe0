"""What KubeRay's Go controller and the Ray it starts do with what we render.

KubeRay cannot run here, so each rule below is read from its source and cites
the file and release it comes from (paths under ray-operator/ in
ray-project/kuberay; line numbers at the tag named). Ray's own rules cite the
Ray 2.60 module. Pure data and functions: the spec's validation, the render
and the tests use the same rules.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Optional

# The oldest KubeRay whose RayService CRD has every field the render uses:
# rayClusterConfig.authOptions first appears in v1.5.1
# (apis/ray/v1/raycluster_types.go v1.5.1:16; absent in v1.5.0 and older,
# where the API server prunes it silently); group `resources` in v1.5.0
# (raycluster_types.go v1.5.0:82); rayClusterDeletionDelaySeconds in v1.5.0
# (rayservice_types.go v1.5.0:92).
MIN_KUBERAY_VERSION_TEXT = "1.5.1"
# The RayService fields an older CRD would drop, as paths under .spec.
REQUIRED_RAYSERVICE_FIELDS = (
    ("rayClusterConfig", "authOptions"),
    ("rayClusterConfig", "workerGroupSpecs", "[]", "resources"),
    ("rayClusterDeletionDelaySeconds",),
)


@dataclass(frozen=True)
class PortRange:
    low: int
    high: int
    owner: str  # who binds or publishes it, and where that is written

    def __contains__(self, port: int) -> bool:
        return self.low <= port <= self.high

    def describe(self) -> str:
        where = str(self.low) if self.low == self.high else f"{self.low}-{self.high}"
        return f"{where} ({self.owner})"


# KubeRay's default head ports (utils/constant.go v1.5.1:96-100).
GCS_PORT = 6379
DASHBOARD_PORT = 8265
CLIENT_PORT = 10001
# KubeRay adds a container port `metrics: 8080` to every Ray container
# (common/pod.go v1.5.1:221-226 head, :392-397 workers), passes it to Ray as
# metrics-export-port (pod.go:854-855) and publishes it on the head Service
# (common/service.go v1.5.1:399-410 getServicePorts).
METRICS_PORT = 8080
DASHBOARD_AGENT_PORT = 52365  # pod.go v1.5.1:864-865, constant.go:100

# Ports the OpenAI endpoint (serving.port) must not take. The head Service
# gets every named head port plus `metrics`; the API server rejects a Service
# with two ports of the same (protocol, port) (Kubernetes
# pkg/apis/core/validation ValidateService), so a serve port equal to one of
# KubeRay's leaves the cluster without a head Service. The rest are bound by
# Ray on every pod, so the proxy would fail to bind.
RESERVED_PORTS = (
    PortRange(GCS_PORT, GCS_PORT, "KubeRay's GCS port"),
    PortRange(METRICS_PORT, METRICS_PORT, "KubeRay's metrics port"),
    PortRange(DASHBOARD_PORT, DASHBOARD_PORT, "KubeRay's dashboard port"),
    PortRange(8404, 8404, "Ray Serve's HAProxy stats port"),  # serve/_private/constants.py:848
    PortRange(9101, 9101, "Ray Serve's HAProxy metrics port"),  # serve/_private/constants.py:843-844
    PortRange(CLIENT_PORT, CLIENT_PORT, "KubeRay's Ray client port"),
    PortRange(10002, 19999, "Ray's worker ports"),  # ray start --min/max-worker-port defaults
    PortRange(30000, 31000, "Ray Serve's replica HTTP ports"),  # serve/_private/constants.py:1048-1055
    PortRange(40000, 41000, "Ray Serve's replica gRPC ports"),  # serve/_private/constants.py:1051-1058
    PortRange(DASHBOARD_AGENT_PORT, DASHBOARD_AGENT_PORT, "KubeRay's dashboard agent port"),
)


def find_reserved_port(port: int) -> Optional[PortRange]:
    """The reservation `port` falls in, if any."""
    return next((r for r in RESERVED_PORTS if port in r), None)


def build_head_service_ports(head_container_ports: list[Mapping[str, Any]]) -> list[tuple[str, int]]:
    """(name, port) of KubeRay's head Service for a head container's ports.

    Every named container port, plus `metrics: 8080` when the container has
    no port of that name (common/service.go v1.5.1:399-410 getServicePorts).
    """
    ports = {str(p["name"]): int(p["containerPort"]) for p in head_container_ports if p.get("name")}
    ports.setdefault("metrics", METRICS_PORT)
    return sorted(ports.items())


def find_duplicate_ports(ports: list[tuple[str, int]]) -> list[int]:
    """Port numbers used twice: the API server rejects such a Service."""
    seen: set[int] = set()
    duplicates = []
    for _, port in ports:
        if port in seen:
            duplicates.append(port)
        seen.add(port)
    return sorted(set(duplicates))


# The RayService change hash leaves these out: a change to them neither
# updates nor replaces the running RayCluster. v1.5.1: each worker group's
# replicas, minReplicas, maxReplicas and workersToDelete
# (rayservice_controller.go v1.5.1:1714-1726
# generateHashWithoutReplicasAndWorkersToDelete). v1.6.2 also drops every pod
# template's tolerations and scheduling gates and the cluster's upgradeStrategy
# (utils/util.go v1.6.2:643-666). Ray's autoscaler reads its bounds from the
# RayCluster (autoscaling_config.py _node_type_from_group_spec), so changed
# bounds must be written there.
HASH_IGNORED_WORKER_FIELDS = ("replicas", "minReplicas", "maxReplicas")


def _without_pod_scheduling(template: Mapping[str, Any]) -> dict[str, Any]:
    spec = {k: v for k, v in (template.get("spec") or {}).items() if k not in ("tolerations", "schedulingGates")}
    return {**template, "spec": spec}


def strip_hash_ignored(cluster_config: Mapping[str, Any], version: tuple[int, int, int] = (1, 5, 1)) -> dict[str, Any]:
    """rayClusterConfig without what KubeRay's change hash ignores: equal results mean no rollout."""
    newer = version >= (1, 6, 2)
    out = {k: v for k, v in cluster_config.items() if not (newer and k == "upgradeStrategy")}
    groups = []
    for group in cluster_config.get("workerGroupSpecs") or ():
        group = {k: v for k, v in group.items() if k not in HASH_IGNORED_WORKER_FIELDS}
        scale = {k: v for k, v in (group.pop("scaleStrategy", None) or {}).items() if k != "workersToDelete"}
        if scale:
            group["scaleStrategy"] = scale
        if newer:
            group["template"] = _without_pod_scheduling(group.get("template") or {})
        groups.append(group)
    out["workerGroupSpecs"] = groups
    if newer and "headGroupSpec" in out:
        head = out["headGroupSpec"]
        out["headGroupSpec"] = {**head, "template": _without_pod_scheduling(head.get("template") or {})}
    return out


# A group's Ray resources go either in the group's `resources` map or in
# rayStartParams (num-cpus, num-gpus, memory, resources), never both: KubeRay
# refuses the RayCluster otherwise (utils/validation.go v1.5.1:41-50
# validateRayGroupResources). From `resources` it writes num-cpus, num-gpus,
# memory and the custom-resource JSON itself (common/pod.go v1.5.1:1129-1164).
RAY_START_RESOURCE_PARAMS = ("num-cpus", "num-gpus", "memory", "resources")


def check_group_resources(group: Mapping[str, Any]) -> Optional[str]:
    """KubeRay's refusal of a group that sets resources twice, or None."""
    params = group.get("rayStartParams") or {}
    if group.get("resources") and any(params.get(key) for key in RAY_START_RESOURCE_PARAMS):
        return "resource fields should not be set in both rayStartParams and Resources"
    return None


# The serve Service (<name>-serve-svc) selects ray.io/cluster and
# ray.io/serve=true (common/service.go v1.5.1 BuildServeService). Worker pods
# always carry ray.io/serve=true (common/pod.go v1.5.1:488-494). The head's
# label follows its proxy's health unless excludeHeadPodFromServeSvc is set,
# in which case it is always "false" (rayservice_controller.go
# v1.5.1:1667-1711 updateHeadPodServeLabel).


def head_serves(exclude_head_pod_from_serve_svc: bool, head_proxy_healthy: bool) -> bool:
    """Whether KubeRay labels the head ray.io/serve=true."""
    return not exclude_head_pod_from_serve_svc and head_proxy_healthy


# KubeRay does not refresh activeServiceStatus.rayClusterStatus on its own:
# "changes to it will not trigger the status update" (utils/consistency.go
# v1.5.1). Live worker counts come from the RayCluster's own status.
RAYCLUSTER_STATUS_IS_LIVE = False

# During a NewCluster upgrade KubeRay keeps Ready=True from the old cluster
# and sets UpgradeInProgress=True (rayservice_controller.go v1.5.1:468-500);
# status.observedGeneration trails metadata.generation until it has seen the
# change.
UPGRADE_IN_PROGRESS = "UpgradeInProgress"


def compute_rollout_done(rayservice: Mapping[str, Any]) -> bool:
    """KubeRay has seen the RayService's latest spec and no upgrade is under way."""
    generation = (rayservice.get("metadata") or {}).get("generation")
    status = rayservice.get("status") or {}
    if generation is not None and status.get("observedGeneration") != generation:
        return False
    for condition in status.get("conditions") or ():
        if condition.get("type") == UPGRADE_IN_PROGRESS and condition.get("status") == "True":
            return False
    return True


# ---- The RayClusters behind a RayService (added for the operator's scaling
# and status; line numbers at the tag named) ----

# KubeRay creates each RayCluster of a RayService with a copy of the
# RayService's labels plus two of its own, and the RayService as its
# controller (rayservice_controller.go v1.5.1:1136-1143 and :1180
# constructRayClusterForRayService; the same at v1.3.0:758-765 and
# v1.6.2:1261-1266). It rewrites them only when it updates the cluster in
# place (modifyRayCluster, rayservice_controller.go v1.5.1:1094-1121).
ORIGINATED_FROM_CR_NAME_LABEL = "ray.io/originated-from-cr-name"  # utils/constant.go v1.5.1:17
ORIGINATED_FROM_CRD_LABEL = "ray.io/originated-from-crd"  # utils/constant.go v1.5.1:18


def build_cluster_labels(rayservice: Mapping[str, Any]) -> dict[str, str]:
    """The labels KubeRay puts on a RayCluster it creates for `rayservice`."""
    meta = rayservice.get("metadata") or {}
    labels = dict(meta.get("labels") or {})
    labels[ORIGINATED_FROM_CR_NAME_LABEL] = str(meta.get("name", ""))
    labels[ORIGINATED_FROM_CRD_LABEL] = "RayService"  # utils/constant.go v1.5.1:286-288, utils/util.go:50
    return labels


def find_cluster_names(rayservice: Optional[Mapping[str, Any]]) -> tuple[Optional[str], Optional[str]]:
    """(active, pending) RayCluster names from the RayService's status.

    status.activeServiceStatus.rayClusterName and
    status.pendingServiceStatus.rayClusterName (apis/ray/v1/rayservice_types.go
    v1.5.1:134, :137, :167); KubeRay names the pending cluster before it creates
    it (rayservice_controller.go v1.5.1:395-399).
    """
    status = (rayservice or {}).get("status") or {}
    active = (status.get("activeServiceStatus") or {}).get("rayClusterName") or None
    pending = (status.get("pendingServiceStatus") or {}).get("rayClusterName") or None
    return active, pending


def compute_desired_workers(group: Mapping[str, Any]) -> int:
    """Worker pods KubeRay keeps for one group of a RayCluster.

    replicas clamped into [minReplicas, maxReplicas], times numOfHosts; 0
    while suspended (utils/util.go v1.5.1:386-407
    GetWorkerGroupDesiredReplicas; v1.5.1 takes maxReplicas when min > max,
    v1.6.2:387-405 no longer checks). Missing bounds are the CRD's defaults, 0
    and 2147483647.
    """
    if group.get("suspend"):
        return 0
    low = int(group.get("minReplicas") or 0)
    high = int(group["maxReplicas"]) if group.get("maxReplicas") is not None else 2**31 - 1
    if low > high:
        count = high
    else:
        replicas = group.get("replicas")
        count = low if replicas is None else min(max(int(replicas), low), high)
    return count * int(group.get("numOfHosts") or 1)


@dataclass(frozen=True)
class WorkerCounts:
    desired: int
    ready: int


def read_worker_counts(cluster: Mapping[str, Any]) -> Optional[WorkerCounts]:
    """Worker pods of a RayCluster from its own status, or None before KubeRay wrote one.

    desiredWorkerReplicas is the sum of compute_desired_workers;
    readyWorkerReplicas counts Running and Ready worker pods,
    availableWorkerReplicas Running ones (apis/ray/v1/raycluster_types.go
    v1.5.1:284-296, utils/util.go v1.5.1:447-475; the same fields in
    raycluster_types.go v1.3.0:184-189).
    Every field is omitempty: absent means 0.
    """
    status = cluster.get("status")
    if not status:
        return None
    ready = status.get("readyWorkerReplicas")
    if ready is None:
        ready = status.get("availableWorkerReplicas", 0)
    return WorkerCounts(desired=int(status.get("desiredWorkerReplicas") or 0), ready=int(ready or 0))
