"""ModelDeployment -> an Ingress to the OpenAI Service when spec.ingress is set, pure."""

from __future__ import annotations

from typing import Any, Optional

from shardserve.api.spec import ModelDeployment
from shardserve_operator import naming


def build_ingress(md: ModelDeployment) -> Optional[dict[str, Any]]:
    spec = md.spec.ingress
    if spec is None:
        return None
    name = md.metadata.name
    metadata: dict[str, Any] = {
        "name": naming.ingress_name(name),
        "labels": naming.build_labels(name, naming.COMPONENT_INGRESS),
    }
    if spec.annotations:
        metadata["annotations"] = dict(spec.annotations)
    backend = {"service": {"name": naming.service_name(name), "port": {"number": md.spec.serving.port}}}
    body: dict[str, Any] = {
        "rules": [{"host": spec.host, "http": {"paths": [{"path": spec.path, "pathType": "Prefix", "backend": backend}]}}],
    }
    if spec.class_name:
        body["ingressClassName"] = spec.class_name
    if spec.tls_secret:
        body["tls"] = [{"hosts": [spec.host], "secretName": spec.tls_secret}]
    return {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": metadata, "spec": body}
