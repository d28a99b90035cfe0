"""Digests the operator compares: the rendered hash a child carries, and the fingerprint of a watch event (pure).

The rendered hash is stamped on each child by render and compared by apply;
fingerprints are what the work queue's echo filter keeps of what a reconcile
left, so a watch event showing just that costs nothing.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Mapping
from typing import Any, Optional

from shardserve.api.kuberay import read_worker_counts
from shardserve_operator import naming


def compute_hash(obj: dict[str, Any]) -> str:
    """Digest of an object as rendered, ignoring the annotation that carries it."""
    clean = copy.deepcopy(obj)
    annotations = clean.get("metadata", {}).get("annotations", {})
    annotations.pop(naming.ANNOTATION_RENDERED_HASH, None)
    if not annotations:
        clean.get("metadata", {}).pop("annotations", None)
    canonical = json.dumps(clean, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()[:20]


def read_hash(obj: Optional[dict[str, Any]]) -> Optional[str]:
    if not obj:
        return None
    return (obj.get("metadata", {}).get("annotations") or {}).get(naming.ANNOTATION_RENDERED_HASH)


def compute_fingerprint(parts: Any) -> str:
    """A short digest of what an event about an object must differ in to be worth a reconcile."""
    raw = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


def fingerprint_of(child: Mapping[str, Any]) -> str:
    """A child's spec, labels and annotations (the rendered hash among them) and status:
    an edit to any of them, by hand too, is news; a new resourceVersion alone is not."""
    meta = child.get("metadata") or {}
    return compute_fingerprint([child.get("spec"), meta.get("labels"), meta.get("annotations"), child.get("status")])


def cluster_fingerprint_of(cluster: Mapping[str, Any]) -> str:
    """What a RayCluster event must differ in to be worth a reconcile: its worker bounds and counts."""
    groups = [(g.get("groupName"), g.get("replicas"), g.get("minReplicas"), g.get("maxReplicas"))
              for g in ((cluster.get("spec") or {}).get("workerGroupSpecs") or ())]
    counts = read_worker_counts(cluster)
    return compute_fingerprint([groups, counts and (counts.desired, counts.ready)])
