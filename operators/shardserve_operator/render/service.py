"""ModelDeployment -> the Service for the OpenAI port of the Serve proxies, pure."""

from __future__ import annotations

from typing import Any, Optional

from shardserve.api.spec import ModelDeployment
from shardserve_operator import naming


def build_service(md: ModelDeployment, active_cluster: Optional[str] = None) -> dict[str, Any]:
    """A ClusterIP Service named after the ModelDeployment.

    `active_cluster` is the RayCluster the RayService reports as serving; see
    naming.build_serve_selector for why the selector follows it.
    """
    name = md.metadata.name
    port = md.spec.serving.port
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": naming.service_name(name),
            "labels": naming.build_labels(name, naming.COMPONENT_SERVICE),
        },
        "spec": {
            "type": "ClusterIP",
            "selector": naming.build_serve_selector(name, active_cluster),
            "ports": [{"name": "http", "port": port, "targetPort": port, "protocol": "TCP", "appProtocol": "http"}],
        },
    }
