"""What KubeRay builds from our RayService, as far as Ray's own code reads it.

Only the construction itself lives here; every rule that judges the result is
Ray's code, called from the tests.
"""

from __future__ import annotations

import copy
import json
from typing import Any

RAY_API_VERSION = "ray.io/v1"
# KubeRay names the cluster "<rayservice>-<5 random lowercase letters or digits>"
# (utils.GenerateRayClusterName, ray-operator/controllers/ray/utils/util.go, v1.5.1);
# the suffix only has to look like one.
CLUSTER_SUFFIX = "x7k2q"


def build_raycluster(rayservice: dict[str, Any]) -> dict[str, Any]:
    """The RayCluster CR KubeRay creates for a RayService, as the API server stores it.

    constructRayClusterForRayService (ray-operator/controllers/ray/rayservice_controller.go,
    v1.5.1, lines 1136-1185): labels and annotations copied from the RayService
    plus KubeRay's own, namespace of the RayService, and
    `Spec: *rayService.Spec.RayClusterSpec.DeepCopy()`: spec.rayClusterConfig
    as is. (Only the incremental-upgrade path, which we do not use, drops the
    worker groups' `replicas`.)

    KubeRay adds `num-cpus` (from the CPU limit, else request), `memory` and
    `num-gpus` (from `nvidia.com/gpu` limits) to rayStartParams only when it
    builds each pod's `ray start` command (common/pod.go generateRayStartCommand
    and addWellKnownAcceleratorResources, lines 871-959, v1.5.1). It never
    writes them back to the RayCluster, so the autoscaler, which reads the CR
    (AutoscalingConfigProducer), does not see them. Nor does this.
    """
    meta = rayservice["metadata"]
    # Through the API server the object is JSON: no Python-only values survive.
    spec = json.loads(json.dumps(rayservice["spec"]["rayClusterConfig"]))
    return {
        "apiVersion": RAY_API_VERSION,
        "kind": "RayCluster",
        "metadata": {
            "name": f"{meta['name']}-{CLUSTER_SUFFIX}",
            # A ModelDeployment applied without a namespace lands in "default".
            "namespace": meta.get("namespace") or "default",
            "labels": {
                **copy.deepcopy(meta.get("labels", {})),
                "ray.io/originated-from-cr-name": meta["name"],
                "ray.io/originated-from-crd": "RayService",
            },
            "annotations": copy.deepcopy(meta.get("annotations", {})),
        },
        "spec": spec,
    }


def worker_groups(raycluster: dict[str, Any]) -> list[dict[str, Any]]:
    return list(raycluster["spec"].get("workerGroupSpecs") or [])
