"""The work queue between kopf's handlers and reconcile(): what the handlers of one operator share.

- one lock per ModelDeployment, so its reconciles never overlap;
- an echo filter: a child's watch event that only shows what the last
  reconcile left (same hash, same status) is dropped, so the operator's own
  writes cost no extra reconcile;
- a backoff memory: a failed reconcile's delay holds for every trigger of
  that object;
- the metrics' view of what is managed.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import time
from collections.abc import Mapping
from typing import Any, Optional

import kopf

from shardserve.api.crd import CRD_NAME, build_crd
from shardserve.api.spec import API_VERSION
from shardserve_operator import naming
from shardserve_operator.checks import compute_missing_fields, compute_stale_crd_fields, describe_missing_fields
from shardserve_operator.failures import classify
from shardserve_operator.hashing import cluster_fingerprint_of, fingerprint_of
from shardserve_operator.kinds import CHILD_KINDS, RAYCLUSTER, Kind
from shardserve_operator.kube import Kube
from shardserve_operator.metrics import ManagedState, compute_child_counts
from shardserve_operator.observe import read_crd, read_model_deployment, read_rayservice_crd
from shardserve_operator.reconcile import ReconcileResult, reconcile, retry_later
from shardserve_operator.settings import OperatorSettings
from shardserve_operator.status import READY, find_condition

log = logging.getLogger(__name__)

# A child event's reconcile gives up after this many failed attempts; the
# next event (or the ModelDeployment's own handler) starts over.
CHILD_EVENT_ATTEMPTS = 8
# The trigger label of a reconcile the ModelDeployment's own change (or resume) started.
OWN_TRIGGER = "modeldeployment"


class Controller:
    """What the handlers of one running operator share."""

    def __init__(self, kube: Kube, settings: OperatorSettings):
        self.kube = kube
        self.settings = settings
        self.reconciles = 0
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}
        self._seen: dict[tuple[str, str, Kind], str] = {}
        self._not_before: dict[tuple[str, str], float] = {}
        self._reconciled: set[tuple[str, str]] = set()
        # Every watched ModelDeployment -> the status of its Ready condition.
        self._ready: dict[tuple[str, str], str] = {}
        # (namespace, owner, RayCluster name) -> fingerprint the last reconcile left
        self._seen_clusters: dict[tuple[str, str, str], str] = {}
        # RayService fields the installed CRD lacks (check_kuberay); none known until checked.
        self.kuberay_missing: tuple[str, ...] = ()

    def check_kuberay(self) -> tuple[str, ...]:
        """Reads the installed RayService CRD and notes the fields the render needs that it lacks. Blocking.

        A CRD that cannot be read (no RBAC, not installed yet, API errors)
        leaves strict field validation on every write as the only check.
        """
        try:
            crd = read_rayservice_crd(self.kube)
        except Exception as err:  # 403 and the like: the writes' strict validation still catches it
            log.warning("could not read the RayService CRD (%s); relying on strict field validation",
                        getattr(err, "status", None) or type(err).__name__)
            return self.kuberay_missing
        if crd is None:
            log.warning("the RayService CRD (rayservices.ray.io) is not installed; install KubeRay")
            missing: tuple[str, ...] = ()
        else:
            missing = tuple(compute_missing_fields(crd))
        if missing:
            log.error("KubeRay is too old: %s. No ModelDeployment is applied until it is upgraded.",
                      describe_missing_fields(missing))
        elif self.kuberay_missing:
            log.info("the RayService CRD now has every field the render uses")
        self.kuberay_missing = missing
        return missing

    def check_own_crd(self) -> list[str]:
        """Logs the spec fields the installed ModelDeployment CRD would prune (review #25). Blocking.

        Helm installs a chart's CRDs but never upgrades them, so after an
        upgrade the operator may know fields its CRD still lacks.
        """
        try:
            installed = read_crd(self.kube, CRD_NAME)
        except Exception as err:
            log.warning("could not read the ModelDeployment CRD (%s)", getattr(err, "status", None) or type(err).__name__)
            return []
        if installed is None:
            return []
        stale = compute_stale_crd_fields(installed, build_crd(), API_VERSION)
        if stale:
            log.error("the installed ModelDeployment CRD is older than this operator and drops %s from every "
                      "ModelDeployment; apply this release's CRD: kubectl apply --server-side -f manifests/crds/ "
                      "(helm upgrade does not update CRDs)", ", ".join(stale))
        return stale

    def _lock(self, namespace: str, name: str) -> asyncio.Lock:
        return self._locks.setdefault((namespace, name), asyncio.Lock())

    def _remember(self, namespace: str, name: str, result: ReconcileResult) -> None:
        for kind in CHILD_KINDS:
            key = (namespace, name, kind)
            if kind in result.fingerprints:
                self._seen[key] = result.fingerprints[kind]
            else:
                self._seen.pop(key, None)
        self._forget_clusters(namespace, name)
        for cluster, fingerprint in result.cluster_fingerprints.items():
            self._seen_clusters[(namespace, name, cluster)] = fingerprint

    def _forget_clusters(self, namespace: str, name: str) -> None:
        for key in [k for k in self._seen_clusters if k[:2] == (namespace, name)]:
            del self._seen_clusters[key]

    async def _run(self, body: Mapping[str, Any], attempt: int, trigger: str) -> ReconcileResult:
        """Reconciles in a worker thread; the caller holds the object's lock.

        A backoff (or a server's Retry-After) holds for every trigger of the
        object, so a child's watch event cannot jump the queue.
        """
        meta = body["metadata"]
        key = (meta["namespace"], meta["name"])
        loop = asyncio.get_running_loop()
        wait = self._not_before.get(key, 0.0) - loop.time()
        if wait > 0:
            await asyncio.sleep(wait)
        self.reconciles += 1
        self._reconciled.add(key)
        started = time.monotonic()
        try:
            if self.kuberay_missing:  # look again: KubeRay may have been upgraded since
                await asyncio.to_thread(self.check_kuberay)
            result = await asyncio.to_thread(reconcile, self.kube, copy.deepcopy(dict(body)), self.settings,
                                             attempt=attempt, kuberay_missing=self.kuberay_missing)
        except Exception as err:
            self.kube.metrics.observe_reconcile(trigger, time.monotonic() - started, classify(err).reason)
            if isinstance(err, kopf.TemporaryError):
                self._not_before[key] = loop.time() + (err.delay or 0.0)
            raise
        self.kube.metrics.observe_reconcile(trigger, time.monotonic() - started)
        self._not_before.pop(key, None)
        self._remember(meta["namespace"], meta["name"], result)
        return result

    async def reconcile_body(self, body: Mapping[str, Any], attempt: int = 0) -> ReconcileResult:
        meta = body["metadata"]
        async with self._lock(meta["namespace"], meta["name"]):
            return await self._run(body, attempt, OWN_TRIGGER)

    async def on_child_event(self, kind: Kind, child: Mapping[str, Any], event_type: Optional[str]) -> None:
        """Reconciles the child's owner, read afresh, unless the event is our own echo."""
        owner = find_model_deployment(kind, child)
        if owner is None:
            return
        namespace = child["metadata"]["namespace"]
        for attempt in range(CHILD_EVENT_ATTEMPTS):
            async with self._lock(namespace, owner):
                # Checked under the lock: a reconcile in flight records what it left.
                if attempt == 0 and not self.is_news(kind, child, event_type):
                    return
                try:
                    body = await asyncio.to_thread(read_model_deployment, self.kube, namespace, owner)
                    if body is None:
                        return  # deleted; garbage collection removes the children
                    await self._run(body, attempt, kind.kind.lower())
                    return
                except kopf.PermanentError:
                    return  # reported in status; waits for a new spec
                except kopf.TemporaryError as err:
                    delay = err.delay or self.settings.retry_base_seconds
                except Exception as err:  # reading the ModelDeployment failed
                    delay = retry_later(err, attempt, self.settings).delay or self.settings.retry_base_seconds
            log.debug("retrying %s/%s in %.2fs", namespace, owner, delay)
            await asyncio.sleep(delay)
        log.warning("gave up reconciling %s/%s after %d attempts", namespace, owner, CHILD_EVENT_ATTEMPTS)

    def watch(self, body: Mapping[str, Any]) -> None:
        """Notes a ModelDeployment the watch reported, with the status of its Ready condition."""
        meta = body["metadata"]
        ready = find_condition((body.get("status") or {}).get("conditions"), READY)
        self._ready[(meta["namespace"], meta["name"])] = str((ready or {}).get("status") or "Unknown")

    def managed_state(self, leading: bool) -> ManagedState:
        """What the metrics' gauges show: the watched ModelDeployments and their children."""
        children = compute_child_counts([kind.kind for kind in CHILD_KINDS], [kind.kind for (_, _, kind) in self._seen])
        return ManagedState(leading=leading, ready=dict(self._ready), children=children)

    def forget(self, namespace: str, name: str) -> None:
        """Drops what is remembered about a deleted ModelDeployment."""
        key = (namespace, name)
        self._ready.pop(key, None)
        self._reconciled.discard(key)
        self._not_before.pop(key, None)
        for kind in CHILD_KINDS:
            self._seen.pop((namespace, name, kind), None)
        self._forget_clusters(namespace, name)
        lock = self._locks.get(key)
        if lock is not None and not lock.locked():
            del self._locks[key]

    def is_news(self, kind: Kind, child: Mapping[str, Any], event_type: Optional[str]) -> bool:
        """False for events that show exactly what the last reconcile left behind.

        Also False before the owner's first reconcile in this process: kopf
        runs the owner's own create/resume handler anyway (at start-up the
        children's listings arrive alongside the owners').
        """
        owner = find_model_deployment(kind, child)
        if owner is None:
            return False
        namespace = child["metadata"]["namespace"]
        if (namespace, owner) not in self._reconciled:
            return False
        if event_type == "DELETED":
            return True
        if kind == RAYCLUSTER:
            return self._seen_clusters.get((namespace, owner, child["metadata"]["name"])) != \
                cluster_fingerprint_of(child)
        return self._seen.get((namespace, owner, kind)) != fingerprint_of(child)


def find_model_deployment(kind: Kind, child: Mapping[str, Any]) -> Optional[str]:
    """The ModelDeployment a watched object serves: its controller for our children; for a
    RayCluster (controlled by the RayService) the label KubeRay copied from the RayService."""
    if kind != RAYCLUSTER:
        return naming.find_owner_name(child)
    labels = (child.get("metadata") or {}).get("labels") or {}
    if labels.get(naming.LABEL_MANAGED_BY) != naming.MANAGER:
        return None
    return labels.get(naming.LABEL_MODEL_DEPLOYMENT) or None
