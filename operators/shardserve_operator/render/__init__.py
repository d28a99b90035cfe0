"""Desired children of a ModelDeployment, as plain dicts (pure, deterministic).

`render_children` is what the operator applies and what `shardserve render`
prints: the same input always gives the same objects, byte for byte.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Optional

import yaml

from shardserve.api.spec import ModelDeployment
from shardserve_operator import naming
from shardserve_operator.hashing import compute_hash
from shardserve_operator.render.ingress import build_ingress
from shardserve_operator.render.options import RenderOptions
from shardserve_operator.render.rayservice import build_rayservice
from shardserve_operator.render.service import build_service

__all__ = [
    "RenderOptions",
    "build_ingress",
    "build_rayservice",
    "build_service",
    "is_paused",
    "render_children",
    "render_yaml",
]


def _finish(obj: dict[str, Any], namespace: Optional[str], owner: Optional[dict[str, Any]]) -> dict[str, Any]:
    meta = obj["metadata"]
    ordered: dict[str, Any] = {"name": meta["name"]}
    if namespace:
        ordered["namespace"] = namespace
    ordered.update({k: v for k, v in meta.items() if k != "name"})
    ordered.setdefault("annotations", {})
    if owner:
        ordered["ownerReferences"] = [owner]
    obj["metadata"] = ordered
    ordered["annotations"][naming.ANNOTATION_RENDERED_HASH] = compute_hash(obj)
    return obj


def is_paused(md: ModelDeployment) -> bool:
    """`replicas: 0`: Serve cannot run an application of zero fixed replicas, so nothing runs."""
    return md.spec.autoscaling is None and md.spec.replicas == 0


def render_children(
    md: ModelDeployment,
    options: RenderOptions = RenderOptions(),
    *,
    owner_uid: Optional[str] = None,
    active_cluster: Optional[str] = None,
) -> list[dict[str, Any]]:
    """RayService, Service and (when spec.ingress is set) Ingress, each stamped with its hash.

    A paused deployment (`replicas: 0`) has no RayService: no Ray pod, no
    accelerator held. Its Service and Ingress stay, so clients keep the name.
    Without `owner_uid` (no cluster, as in `shardserve render`) the objects
    carry no owner reference; the operator always sets one.
    """
    owner = naming.build_owner_reference(md.metadata.name, owner_uid) if owner_uid else None
    objects = [] if is_paused(md) else [build_rayservice(md, options)]
    objects.append(build_service(md, active_cluster))
    ingress = build_ingress(md)
    if ingress is not None:
        objects.append(ingress)
    return [_finish(obj, md.metadata.namespace, owner) for obj in objects]


class _BlockDumper(yaml.SafeDumper):
    """Multi-line strings (serveConfigV2) as `|` blocks, so they read as YAML."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_BlockDumper.add_representer(str, _represent_str)


def render_yaml(objects: Iterable[dict[str, Any]]) -> str:
    """A YAML multi-document stream, keys in rendering order."""
    return yaml.dump_all(list(objects), Dumper=_BlockDumper, sort_keys=False, explicit_start=True)
