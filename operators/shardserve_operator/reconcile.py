"""One reconcile of one ModelDeployment: observe -> validate -> check -> render -> apply -> status.

Level-based and idempotent: it reads what exists and converges it, whatever
triggered it, so a retry or a duplicate trigger is always safe. Errors leave
as they are (typed API errors, or the failures in failures.py); whether and
when to retry is not decided here but by the controller, from classify().
What the cluster lacks (a KubeRay CRD too old for the render, the model's
claim) holds every write back (HeldBackError) and is looked at again after a
while: nothing announces when it is fixed.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Optional

from shardserve.api.validation import SpecError, parse_deployment
from shardserve_operator.apply import ApplyReport, KubeRayUnsupportedError, apply_children, apply_events, apply_status
from shardserve_operator.checks import compute_claim_problem, describe_missing_fields, find_claim_names
from shardserve_operator.failures import HeldBackError, InvalidSpecError, NotOwnedError, classify, describe_error
from shardserve_operator.hashing import cluster_fingerprint_of, fingerprint_of
from shardserve_operator.kinds import RAYSERVICE, Kind, kind_of
from shardserve_operator.kube import Kube
from shardserve_operator.naming import is_controlled_by
from shardserve_operator.observe import Observed, find_active_cluster, observe_children, read_claim
from shardserve_operator.render import render_children
from shardserve_operator.settings import OperatorSettings
from shardserve_operator.status import (
    CLAIM_NOT_FOUND,
    CLAIM_NOT_SHAREABLE,
    KUBERAY_UNSUPPORTED,
    ApplyOutcome,
    Notice,
    compute_events,
    compute_status,
)

log = logging.getLogger(__name__)

# Consecutive failed attempts after which ResourcesApplied turns False: one
# blip (a 409 or a 503) is retried quietly instead of flapping the condition.
APPLY_FAILED_AFTER = 3


@dataclass
class ReconcileResult:
    status_written: bool = False
    report: Optional[ApplyReport] = None
    # kind -> fingerprint of the child as left on the server
    fingerprints: dict[Kind, str] = field(default_factory=dict)
    # RayCluster name -> its fingerprint as left on the server
    cluster_fingerprints: dict[str, str] = field(default_factory=dict)


def _document(body: Mapping[str, Any]) -> dict[str, Any]:
    return {key: body[key] for key in ("apiVersion", "kind", "metadata", "spec") if key in body}


def _write_status(kube: Kube, body: Mapping[str, Any], previous: dict[str, Any], status: dict[str, Any], now: datetime,
                  notices: tuple[Notice, ...] = ()) -> bool:
    meta = body["metadata"]
    if not apply_status(kube, meta["namespace"], meta["name"], previous, status):
        return False
    apply_events(kube, body, compute_events(previous, status, notices), now)
    return True


def reconcile(
    kube: Kube,
    body: Mapping[str, Any],
    settings: OperatorSettings,
    *,
    attempt: int = 0,
    now: Optional[datetime] = None,
    kuberay_missing: tuple[str, ...] = (),
) -> ReconcileResult:
    """Converges one ModelDeployment's children and status. Blocking (run it in a thread).

    `attempt` counts the failed reconciles of this object in a row before
    this one (ResourcesApplied turns False at APPLY_FAILED_AFTER).
    `kuberay_missing` are RayService fields the installed CRD lacks (seen at
    start-up): while there are any, no child is written.
    """
    now = now or datetime.now(UTC)
    meta = body["metadata"]
    namespace, name, uid, generation = meta["namespace"], meta["name"], meta.get("uid"), meta.get("generation")
    if not uid:
        raise InvalidSpecError("the object has no metadata.uid; cannot set owner references")
    previous = dict(body.get("status") or {})
    common = dict(name=name, namespace=namespace, now=now, previous=previous)

    observed: Observed = observe_children(kube, namespace, name, uid)
    ours = observed.rayservice if observed.rayservice and is_controlled_by(observed.rayservice, uid) else None
    common["clusters"] = observed.clusters

    try:
        md = parse_deployment(_document(body), source=f"{namespace}/{name}")
    except SpecError as err:
        status = compute_status(None, ours, generation, problems=err.problems, **common)
        _write_status(kube, body, previous, status, now)
        # Not retried: only a new spec (a new generation) can fix it.
        raise InvalidSpecError("invalid spec: " + "; ".join(err.problems)) from None

    def hold_back(reason: str, message: str) -> HeldBackError:
        """Reports why nothing is written, and when to look again."""
        held = compute_status(md, ours, generation, applied=ApplyOutcome(error=message, reason=reason), **common)
        _write_status(kube, body, previous, held, now)
        return HeldBackError(f"{namespace}/{name}: {message}", reason)

    if kuberay_missing:
        raise hold_back(KUBERAY_UNSUPPORTED, describe_missing_fields(kuberay_missing))
    desired = render_children(md, settings.render, owner_uid=uid, active_cluster=find_active_cluster(ours))
    # A paused deployment (spec.replicas 0) renders no RayService.
    rendered = next((obj for obj in desired if kind_of(obj) == RAYSERVICE), None)
    claims = {claim: read_claim(kube, namespace, claim) for claim in find_claim_names(rendered)}
    absent = [claim for claim, found in claims.items() if found is None]
    if absent:
        raise hold_back(CLAIM_NOT_FOUND, f"PersistentVolumeClaim {namespace}/{absent[0]} (spec.model.source) "
                                         f"does not exist; nothing is applied until it does")
    notices = tuple(Notice(CLAIM_NOT_SHAREABLE, problem) for found in claims.values()
                    if found is not None and (problem := compute_claim_problem(found)))
    for notice in notices:
        log.warning("%s/%s: %s", namespace, name, notice.message)

    try:
        report = apply_children(kube, namespace, name, uid, desired, observed)
    except KubeRayUnsupportedError as err:
        log.error("%s/%s: %s", namespace, name, err)
        raise hold_back(KUBERAY_UNSUPPORTED, str(err)) from err
    except Exception as err:
        failure = classify(err)
        if not failure.retriable or attempt + 1 >= APPLY_FAILED_AFTER:
            failed = compute_status(md, ours, generation, **common,
                                    applied=ApplyOutcome(error=describe_error(err), reason=failure.condition_reason))
            try:
                _write_status(kube, body, previous, failed, now)
            except Exception:  # the API is failing already; the retry will write it
                log.debug("could not write status of %s/%s", namespace, name, exc_info=True)
        raise

    # Status describes the children as they are now, after this apply.
    common["clusters"] = report.clusters
    status = compute_status(md, report.current.get(RAYSERVICE), generation, paused=rendered is None,
                            applied=ApplyOutcome(not_owned=tuple(report.not_owned), notices=notices), **common)
    written = _write_status(kube, body, previous, status, now, notices)
    result = ReconcileResult(
        status_written=written,
        report=report,
        fingerprints={kind: fingerprint_of(child) for kind, child in report.current.items()},
        cluster_fingerprints={cluster: cluster_fingerprint_of(obj) for cluster, obj in report.clusters.items()},
    )
    if report.writes or written:
        log.info("reconciled %s/%s: created %s, updated %s, deleted %s, status %s", namespace, name,
                 report.created or "-", report.updated or "-", report.deleted or "-",
                 "written" if written else "unchanged")
    if report.not_owned:
        # Nothing announces when the name is freed; look again later.
        raise NotOwnedError("; ".join(report.not_owned))
    return result
