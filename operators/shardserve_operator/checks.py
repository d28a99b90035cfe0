"""What the cluster must offer before the operator writes a ModelDeployment's children (pure).

- The installed RayService CRD must know every field the render uses
  (shardserve.api.kuberay.REQUIRED_RAYSERVICE_FIELDS): an older CRD prunes them
  silently, and Ray's token authentication, for one, would then be off.
- A write refused under strict field validation names the fields the
  schema lacks.
- A pvc:// model's claim must exist, and pods on different nodes can only
  share it when it is ReadOnlyMany or ReadWriteMany.
- The installed ModelDeployment CRD must know every field of this
  operator's spec: Helm never upgrades a chart's CRDs, and an older CRD
  prunes new fields from every ModelDeployment without an error.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Optional

from shardserve.api.kuberay import MIN_KUBERAY_VERSION_TEXT, REQUIRED_RAYSERVICE_FIELDS
from shardserve_operator.api_errors import ApiBadRequest

RAYSERVICE_CRD_NAME = "rayservices.ray.io"
RAYSERVICE_VERSION = "v1"

# The API server's refusal under fieldValidation=Strict, for built-in and
# custom resources alike: 'RayService in version "v1" cannot be handled as a
# RayService: strict decoding error: unknown field "spec.x", unknown field "spec.y"'.
_UNKNOWN_FIELD = re.compile(r'unknown field "([^"]+)"')
SHAREABLE_ACCESS_MODES = ("ReadOnlyMany", "ReadWriteMany")


def format_field_path(path: Sequence[str]) -> str:
    """('rayClusterConfig', 'workerGroupSpecs', '[]', 'resources') -> 'spec.rayClusterConfig.workerGroupSpecs[].resources'."""
    out = "spec"
    for part in path:
        out += part if part == "[]" else f".{part}"
    return out


def _schema_of_version(crd: Mapping[str, Any], version: str) -> Optional[Mapping[str, Any]]:
    for entry in (crd.get("spec") or {}).get("versions") or ():
        if entry.get("name") == version:
            return ((entry.get("schema") or {}).get("openAPIV3Schema")) or None
    return None


def _keeps(schema: Mapping[str, Any], path: Sequence[str]) -> bool:
    """Whether an object under `schema` keeps a value at `path` (a list's items are '[]')."""
    node: Mapping[str, Any] = schema
    for part in path:
        if part == "[]":
            items = node.get("items")
            if not isinstance(items, Mapping):
                return bool(node.get("x-kubernetes-preserve-unknown-fields"))
            node = items
            continue
        properties = node.get("properties") or {}
        if part in properties:
            node = properties[part]
        elif isinstance(node.get("additionalProperties"), Mapping):
            node = node["additionalProperties"]
        else:
            # Without a declared property only preserve-unknown-fields keeps it.
            return bool(node.get("x-kubernetes-preserve-unknown-fields"))
    return True


def compute_missing_fields(
    crd: Mapping[str, Any],
    required: Iterable[Sequence[str]] = REQUIRED_RAYSERVICE_FIELDS,
    version: str = RAYSERVICE_VERSION,
) -> list[str]:
    """The required .spec paths the CRD's `version` schema would prune, as 'spec.a.b[].c'.

    A version the CRD does not serve prunes nothing: it refuses everything,
    so every path counts as missing.
    """
    schema = _schema_of_version(crd, version)
    missing = []
    for path in required:
        if schema is None or not _keeps(schema, ("spec", *path)):
            missing.append(format_field_path(path))
    return missing


def _leaf_paths(schema: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every declared field path under `schema` ('[]' for a list's items)."""
    paths = []
    for name, node in (schema.get("properties") or {}).items():
        path = prefix + (name,)
        paths.append(path)
        paths += _leaf_paths(node, path)
        if isinstance(node.get("items"), Mapping):
            paths += _leaf_paths(node["items"], path + ("[]",))
    return paths


def compute_stale_crd_fields(installed: Mapping[str, Any], current: Mapping[str, Any], version: str) -> list[str]:
    """The .spec fields of the `current` CRD that the `installed` one would prune, as 'spec.a.b'."""
    schema = _schema_of_version(current, version) or {}
    spec = (schema.get("properties") or {}).get("spec") or {}
    paths = _leaf_paths(spec)
    return compute_missing_fields(installed, paths, version)


def describe_missing_fields(fields: Sequence[str]) -> str:
    return (f"the installed RayService CRD lacks {', '.join(fields)}: the API server would drop "
            f"{'it' if len(fields) == 1 else 'them'}; KubeRay >= {MIN_KUBERAY_VERSION_TEXT} is required "
            f"(upgrade KubeRay and its CRDs)")


def find_unknown_fields(err: BaseException) -> list[str]:
    """The fields a 400 under strict field validation names; [] for any other error."""
    if not isinstance(err, ApiBadRequest):
        return []
    text = err.message or err.body
    if "strict decoding error" not in text and "unknown field" not in text:
        return []
    return _UNKNOWN_FIELD.findall(text) or ["(a field the server did not name)"]


def describe_unknown_fields(fields: Sequence[str], what: str) -> str:
    return (f"the API server refused {what} under strict field validation: unknown field "
            f"{', '.join(fields)}; the installed KubeRay CRD is too old, KubeRay >= "
            f"{MIN_KUBERAY_VERSION_TEXT} is required (upgrade KubeRay and its CRDs)")


def find_claim_names(rayservice: Optional[Mapping[str, Any]]) -> list[str]:
    """PersistentVolumeClaims the Ray pods of a rendered RayService mount, in order."""
    if not rayservice:
        return []
    cluster = (rayservice.get("spec") or {}).get("rayClusterConfig") or {}
    groups = [cluster.get("headGroupSpec") or {}, *(cluster.get("workerGroupSpecs") or ())]
    names: list[str] = []
    for group in groups:
        for volume in ((group.get("template") or {}).get("spec") or {}).get("volumes") or ():
            claim = (volume.get("persistentVolumeClaim") or {}).get("claimName")
            if claim and claim not in names:
                names.append(claim)
    return names


def compute_claim_problem(claim: Mapping[str, Any]) -> Optional[str]:
    """Why pods on different nodes cannot share `claim`, or None when they can.

    The bound volume's modes (status.accessModes) decide; before binding,
    the requested ones (spec.accessModes). A pod's readOnly mount does not
    change the volume's access mode.
    """
    modes = (claim.get("status") or {}).get("accessModes") or (claim.get("spec") or {}).get("accessModes") or []
    if any(mode in SHAREABLE_ACCESS_MODES for mode in modes):
        return None
    name = (claim.get("metadata") or {}).get("name", "")
    offered = ", ".join(modes) or "no access mode"
    return (f"PersistentVolumeClaim {name} offers {offered}: Ray pods on different nodes (several worker "
            f"pods, or the second RayCluster of an upgrade) cannot all mount it; use a ReadOnlyMany or "
            f"ReadWriteMany claim")
