"""The only module that writes what the operator reconciles: children, RayCluster bounds, status, events.

Get -> create, or replace when the child no longer matches its render: API
servers without server-side apply (and mock servers) behave the same, and a
replace carrying the resourceVersion that was read fails with 409 instead of
overwriting someone's concurrent change; that 409 is retried once, at once,
on a fresh read. An object whose controller is not this ModelDeployment is
never touched. Every write uses strict field validation, so a field the
installed CRD lacks fails the write instead of vanishing.

A child matches when its rendered-hash annotation is the new render's (the
ModelDeployment's spec did not change) and it still holds every value the
render sets (find_child_drift). So a hand edit of a child (kubectl edit, a
patch) is reverted by the reconcile its watch event starts, as KServe
reverts its Deployments: the ModelDeployment is the one place to change a
child. An edit that kept the hash annotation would otherwise stay unnoticed
and then vanish at some later, unrelated spec change (KubeRay's hash
annotation on its RayClusters behaves that way; that is not copied here).
Fields the render does not set are not compared (the server fills defaults
in), and a replace writes the spec as rendered; labels, annotations and
owner references others added are kept.

KubeRay's change hash leaves each worker group's replicas, minReplicas and
maxReplicas out (shardserve.api.kuberay.HASH_IGNORED_WORKER_FIELDS), so new
bounds on the RayService never reach its running RayClusters, while Ray's
autoscaler reads them from there. The operator writes them onto the active
and pending RayClusters itself, with a JSON patch that tests each group's
name at its index.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Optional

from shardserve_operator import naming
from shardserve_operator.api_errors import ApiConflict, ApiError, ApiInvalid, ApiNotFound
from shardserve_operator.checks import describe_unknown_fields, find_unknown_fields
from shardserve_operator.drift import find_child_drift
from shardserve_operator.hashing import read_hash
from shardserve_operator.kinds import CHILD_KINDS, EVENT, MODEL_DEPLOYMENT, RAYCLUSTER, RAYSERVICE, Kind, kind_of
from shardserve_operator.kube import JSON_PATCH, MERGE_PATCH, STRICT, Kube, compute_request_kind
from shardserve_operator.observe import Observed
from shardserve_operator.status import EventRecord, format_time

log = logging.getLogger(__name__)

# Fields the API server allocates for a Service; a replace must carry them over.
_SERVICE_ALLOCATED = ("clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy", "healthCheckNodePort")


def describe(kind: Kind, namespace: str, name: str) -> str:
    return f"{kind.kind} {namespace}/{name}"


@dataclass
class ApplyReport:
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    # Objects in the way: same name, another (or no) controller.
    not_owned: list[str] = field(default_factory=list)
    # kind -> our child as the server now holds it (the write's response, or as read)
    current: dict[Kind, dict[str, Any]] = field(default_factory=dict)
    # name -> the RayService's RayClusters as the server now holds them
    clusters: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def writes(self) -> int:
        return len(self.created) + len(self.updated) + len(self.deleted)


class KubeRayUnsupportedError(Exception):
    """The API server refused a KubeRay object under strict field validation: its CRD is too old."""


def _write(kube: Kube, kind: Kind, method: str, path: str, body: Any, what: str,
           content_type: Optional[str] = None) -> dict[str, Any]:
    """One write with strict field validation; a KubeRay CRD lacking a field raises KubeRayUnsupportedError.

    A failed write says which it was ("create RayService default/tiny: HTTP 500 ..."),
    and ResourcesApplied's message carries that.
    """
    try:
        if content_type:
            return kube.request(method, path, body, content_type=content_type, query=STRICT)
        return kube.request(method, path, body, query=STRICT)
    except ApiError as err:
        fields = find_unknown_fields(err)
        if fields and kind in (RAYSERVICE, RAYCLUSTER):
            raise KubeRayUnsupportedError(describe_unknown_fields(fields, what)) from err
        err.during(f"{compute_request_kind(method, path)[0]} {what}")
        raise


def build_replacement(existing: Mapping[str, Any], desired: Mapping[str, Any]) -> dict[str, Any]:
    """The object to PUT: desired spec and our labels/annotations over what the server holds.

    Labels, annotations and owner references others added are kept; the
    resourceVersion read is kept too, so a concurrent change makes it fail.
    """
    body = copy.deepcopy(dict(existing))
    meta = body.setdefault("metadata", {})
    meta.pop("managedFields", None)
    want = desired["metadata"]
    meta["labels"] = {**(meta.get("labels") or {}), **want.get("labels", {})}
    meta["annotations"] = {**(meta.get("annotations") or {}), **want.get("annotations", {})}
    ours = {ref["uid"] for ref in want.get("ownerReferences", [])}
    others = [ref for ref in meta.get("ownerReferences") or [] if ref.get("uid") not in ours]
    refs = others + list(want.get("ownerReferences", []))
    if refs:
        meta["ownerReferences"] = refs
    spec = copy.deepcopy(desired["spec"])
    if desired.get("kind") == "Service":
        old = existing.get("spec") or {}
        spec.update({key: old[key] for key in _SERVICE_ALLOCATED if key in old and key not in spec})
    body["spec"] = spec
    return body


def apply_children(
    kube: Kube,
    namespace: str,
    md_name: str,
    owner_uid: str,
    desired: Sequence[dict[str, Any]],
    observed: Observed,
) -> ApplyReport:
    """Creates, replaces or deletes children so the server matches `desired`.

    Raises ApiError on the first failed write, naming it; the caller retries the
    whole reconcile, which is idempotent.
    """
    report = ApplyReport()
    rendered = {kind_of(obj): obj for obj in desired}
    for kind in CHILD_KINDS:
        name = naming.child_name(kind, md_name)
        what = describe(kind, namespace, name)
        existing = observed.get(kind)
        want = rendered.get(kind)
        if existing is not None and not naming.is_controlled_by(existing, owner_uid):
            if want is not None:
                report.not_owned.append(_describe_holder(existing, what))
            continue  # not ours: never updated or deleted
        if want is None:
            if existing is not None:
                delete_child(kube, kind, namespace, existing)
                report.deleted.append(what)
            continue
        _converge(kube, kind, namespace, name, what, owner_uid, existing, want, report)
    if RAYSERVICE in rendered and RAYSERVICE in report.current:
        apply_cluster_bounds(kube, namespace, rendered[RAYSERVICE], observed.clusters, report)
    return report


def _describe_holder(existing: Mapping[str, Any], what: str) -> str:
    ref = naming.find_controller(existing)
    holder = f"{ref.get('kind')} {ref.get('name')}" if ref else "no controller"
    return f"{what} exists and is controlled by {holder}"


def _converge(kube: Kube, kind: Kind, namespace: str, name: str, what: str, owner_uid: str,
              existing: Optional[Mapping[str, Any]], want: dict[str, Any], report: ApplyReport) -> None:
    """Creates or replaces one child. A replace that meets 409 (someone wrote in between,
    often KubeRay's status) reads the object again and tries once more, at once."""
    for last in (False, True):
        if existing is None:
            report.current[kind] = _write(kube, kind, "POST", kind.path(namespace), want, what)
            report.created.append(what)
            return
        if not naming.is_controlled_by(existing, owner_uid):
            report.not_owned.append(_describe_holder(existing, what))
            return
        if read_hash(dict(existing)) == read_hash(want):
            drift = find_child_drift(want, existing)
            if drift is None:
                report.current[kind] = dict(existing)
                report.unchanged.append(what)
                return
            log.info("%s differs from its ModelDeployment at %s (edited by hand?); reverting it", what, drift)
        try:
            report.current[kind] = _write(kube, kind, "PUT", kind.path(namespace, name),
                                          build_replacement(existing, want), what)
            report.updated.append(what)
            return
        except ApiConflict:
            if last:
                raise
        log.debug("conflict replacing %s; reading it again", what)
        existing = kube.get(kind, namespace, name)


def build_bounds_patch(cluster: Mapping[str, Any], rendered_groups: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """A JSON patch giving a RayCluster's worker groups the rendered minReplicas/maxReplicas.

    Groups are matched by groupName; each changed group's ops start with a
    `test` of its name at its index, so a reordered list fails the patch (422)
    instead of changing the wrong group. replicas is clamped into the new
    bounds, as KubeRay does when it counts pods (shardserve.api.kuberay.compute_desired_workers),
    so Ray's autoscaler starts from a count the bounds allow. [] when nothing differs.
    """
    wanted = {group.get("groupName"): group for group in rendered_groups if group.get("groupName")}
    ops: list[dict[str, Any]] = []
    for index, group in enumerate(((cluster.get("spec") or {}).get("workerGroupSpecs")) or ()):
        target = wanted.get(group.get("groupName"))
        if target is None:
            continue
        low = target.get("minReplicas", group.get("minReplicas"))
        high = target.get("maxReplicas", group.get("maxReplicas"))
        changes = [(key, value) for key, value in (("minReplicas", low), ("maxReplicas", high))
                   if value is not None and group.get(key) != value]
        replicas = group.get("replicas")
        if replicas is not None and low is not None and high is not None and low <= high:
            clamped = min(max(int(replicas), int(low)), int(high))
            if clamped != replicas:
                changes.append(("replicas", clamped))
        if changes:
            base = f"/spec/workerGroupSpecs/{index}"
            ops.append({"op": "test", "path": f"{base}/groupName", "value": group["groupName"]})
            ops += [{"op": "add", "path": f"{base}/{key}", "value": value} for key, value in changes]
    return ops


def apply_cluster_bounds(kube: Kube, namespace: str, rayservice: Mapping[str, Any],
                         clusters: Mapping[str, Mapping[str, Any]], report: ApplyReport) -> None:
    """Writes the rendered worker bounds onto each of the RayService's RayClusters that differs.

    A cluster gone meanwhile (KubeRay deletes the old one after a switch) is
    skipped; a failed name test (422: groups reordered) is retried once on a
    fresh read.
    """
    groups = ((rayservice.get("spec") or {}).get("rayClusterConfig") or {}).get("workerGroupSpecs") or ()
    for name, cluster in clusters.items():
        what = describe(RAYCLUSTER, namespace, name)
        current: Optional[Mapping[str, Any]] = cluster
        for last in (False, True):
            ops = build_bounds_patch(current, groups) if current is not None else []
            if not ops:
                break
            try:
                current = _write(kube, RAYCLUSTER, "PATCH", RAYCLUSTER.path(namespace, name), ops,
                                 f"{what}'s worker bounds", content_type=JSON_PATCH)
                report.updated.append(f"{what} worker bounds")
                break
            except ApiNotFound:
                current = None
                break
            except ApiInvalid:
                if last:
                    raise
            current = kube.get(RAYCLUSTER, namespace, name)
        if current is not None:
            report.clusters[name] = dict(current)


def delete_child(kube: Kube, kind: Kind, namespace: str, existing: Mapping[str, Any]) -> None:
    """Deletes the very object that was read (uid precondition); gone already is fine."""
    meta = existing["metadata"]
    options: dict[str, Any] = {"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": "Background"}
    if meta.get("uid"):
        options["preconditions"] = {"uid": meta["uid"]}
    try:
        kube.request("DELETE", kind.path(namespace, meta["name"]), options)
    except ApiNotFound:
        pass
    except ApiError as err:
        err.during(f"delete {describe(kind, namespace, meta['name'])}")
        raise


def build_status_patch(previous: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """A JSON merge patch turning `previous` into `new` (null removes a field)."""
    patch = {key: None for key in previous if key not in new}
    patch.update(new)
    return {"status": patch}


def apply_status(kube: Kube, namespace: str, name: str, previous: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    """Writes status through the status subresource when it differs; True if written."""
    if dict(previous) == dict(new):
        return False
    try:
        kube.request("PATCH", MODEL_DEPLOYMENT.path(namespace, name, "status"),
                     build_status_patch(previous, new), content_type=MERGE_PATCH)
    except ApiNotFound:  # deleted meanwhile
        return False
    except ApiError as err:
        err.during(f"patch the status of {describe(MODEL_DEPLOYMENT, namespace, name)}")
        raise
    return True


def build_event(md: Mapping[str, Any], record: EventRecord, now: datetime) -> dict[str, Any]:
    meta = md["metadata"]
    stamp = format_time(now)
    return {
        "apiVersion": "v1",
        "kind": "Event",
        # client-go's naming: <object>.<unix nanoseconds in hex>
        "metadata": {"name": f"{meta['name']}.{int(now.timestamp() * 1e9):x}", "namespace": meta["namespace"]},
        "involvedObject": {
            "apiVersion": md.get("apiVersion", MODEL_DEPLOYMENT.api_version),
            "kind": md.get("kind", MODEL_DEPLOYMENT.kind),
            "name": meta["name"],
            "namespace": meta["namespace"],
            "uid": meta.get("uid"),
        },
        "reason": record.reason,
        "message": record.message[:1024],
        "type": record.type,
        "source": {"component": naming.MANAGER},
        "reportingComponent": naming.MANAGER,
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
    }


def apply_events(kube: Kube, md: Mapping[str, Any], records: Sequence[EventRecord], now: datetime) -> int:
    """Posts events; best effort (an event lost must not fail a reconcile). Returns how many were posted."""
    posted = 0
    for offset, record in enumerate(records):
        body = build_event(md, record, now)
        body["metadata"]["name"] += f"{offset:x}"
        try:
            kube.request("POST", EVENT.path(md["metadata"]["namespace"]), body)
            posted += 1
            kube.metrics.count_event(record.type, record.reason)
        except ApiError as err:
            log.warning("could not post event %s for %s: %s", record.reason, md["metadata"]["name"], err)
    return posted
