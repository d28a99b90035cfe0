"""The Serve application of a ModelDeployment (pure): the operator writes it
into the RayService's serveConfigV2, and `shardserve run` deploys the same
config to its local Ray, so both go through Serve's declarative path."""

from __future__ import annotations

from typing import Any

from shardserve.api.contract import APP_IMPORT_PATH, LLM_DEPLOYMENT
from shardserve.api.serve_options import build_deployment_config
from shardserve.api.spec import ModelDeployment

# Spec fields the Serve application never reads: the pod templates, the
# Service, the Ingress and the deployment's options below carry them. Serve
# hashes an application's args into its code version
# (serve/_private/deploy_utils.py get_app_code_version), and a new code
# version restarts every replica, so a field left in the args would reload
# the weights on each `kubectl scale` or Ingress edit.
CLUSTER_ONLY_FIELDS = (
    ("replicas",), ("ingress",), ("image",), ("telemetry",),
    ("model", "cacheSize"), ("model", "credentialsSecret"),
    ("resources", "nodeSelector"), ("resources", "tolerations"), ("resources", "memory"),
    ("autoscaling", "minReplicas"), ("autoscaling", "maxReplicas"),
)


def build_app_args(md: ModelDeployment) -> dict[str, Any]:
    """The ModelDeployment document passed to build_app, without the fields only the cluster reads."""
    metadata = {"name": md.metadata.name}
    if md.metadata.namespace:
        metadata["namespace"] = md.metadata.namespace
    spec = md.spec.model_dump(by_alias=True, exclude_none=True, mode="json")
    for *parents, leaf in CLUSTER_ONLY_FIELDS:
        node = spec
        for part in parents:
            node = node.get(part) or {}
        node.pop(leaf, None)
    if "tenants" in spec:
        # The limits travel as the deployment's user_config (below); the args
        # keep only that tenants are on, which sets vLLM's scheduling policy.
        spec["tenants"] = {}
    return {"apiVersion": md.api_version, "kind": md.kind, "metadata": metadata, "spec": spec}


def build_deployment_options(md: ModelDeployment) -> dict[str, Any]:
    """The model deployment's replica count or autoscaling bounds, and its
    tenants' limits, as options of the Serve config.

    Serve applies these to the running application without a new code
    version: replicas are added or removed, none restarted, and running
    replicas get a new user_config through `reconfigure`.
    """
    config = build_deployment_config(md)
    options: dict[str, Any] = {"name": LLM_DEPLOYMENT}
    if "autoscaling_config" in config:
        options["autoscaling_config"] = config["autoscaling_config"]
    else:
        options["num_replicas"] = config["num_replicas"]
    if "user_config" in config:
        options["user_config"] = config["user_config"]
    return options


def build_application_config(md: ModelDeployment) -> dict[str, Any]:
    """One application on "/", built by `build_app` from the spec's args."""
    return {
        "name": md.metadata.name,
        "import_path": APP_IMPORT_PATH,
        "route_prefix": "/",
        "args": build_app_args(md),
        "deployments": [build_deployment_options(md)],
    }
