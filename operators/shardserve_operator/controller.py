"""The work queue between kopf's handlers and reconcile(): what the handlers of one operator share.

- one lock per ModelDeployment, so its reconciles never overlap;
- an echo filter: a child's watch event that only shows what the last
  reconcile left (same spec, labels, annotations and status) is dropped, so
  the operator's own writes cost no extra reconcile, while a hand edit does;
- a backoff memory per object: its failed reconciles in a row and when the
  next may start, which holds for every trigger of that object;
- the metrics' view of what is managed.

Who retries a failed reconcile. Every path waits the same delay,
compute_backoff (a growing backoff honouring Retry-After, or a fixed "look
again" for what nothing announces), counted from the same backoff memory,
and gives up only on what classify calls not retriable:

- the ModelDeployment's own change (kopf's create/update/resume handler):
  kopf. The failure leaves as kopf.TemporaryError with our delay, or
  kopf.PermanentError, and kopf re-runs the handler; that is the right tool
  here, since kopf records a change as handled only once it succeeded.
- a child's watch event: this queue. It schedules one retry per object,
  which reads the ModelDeployment afresh. The retry is dropped when any
  other reconcile of the object ends, so only the trigger that failed last
  retries.
- kopf's own API requests (its watches, its annotation patches): kopf's
  networking.error_backoffs (main.py), never a reconcile.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Optional

import kopf

from shardserve.api.crd import CRD_NAME, build_crd
from shardserve.api.spec import API_VERSION
from shardserve_operator import naming
from shardserve_operator.checks import compute_missing_fields, compute_stale_crd_fields, describe_missing_fields
from shardserve_operator.failures import InvalidSpecError, classify, compute_backoff, describe_error
from shardserve_operator.hashing import cluster_fingerprint_of, fingerprint_of
from shardserve_operator.kinds import CHILD_KINDS, RAYCLUSTER, Kind
from shardserve_operator.kube import Kube
from shardserve_operator.metrics import ManagedState, compute_child_counts
from shardserve_operator.observe import read_crd, read_model_deployment, read_rayservice_crd
from shardserve_operator.reconcile import ReconcileResult, reconcile
from shardserve_operator.settings import OperatorSettings
from shardserve_operator.status import READY, find_condition

log = logging.getLogger(__name__)

# The trigger label of a reconcile the ModelDeployment's own change (or resume) started.
OWN_TRIGGER = "modeldeployment"


def now_utc() -> datetime:
    return datetime.now(UTC)


@dataclass
class _Backoff:
    """One object's failed reconciles in a row, and when the next may start."""

    failures: int = 0
    not_before: float = 0.0  # event-loop time


class Controller:
    """What the handlers of one running operator share."""

    def __init__(self, kube: Kube, settings: OperatorSettings, clock: Callable[[], datetime] = now_utc):
        self.kube = kube
        self.settings = settings
        # The wall time status and events are stamped with (lastTransitionTime); backoffs use the loop's clock.
        self.clock = clock
        self.reconciles = 0
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}
        self._seen: dict[tuple[str, str, Kind], str] = {}
        self._backoffs: dict[tuple[str, str], _Backoff] = {}
        # (namespace, name) -> the pending retry of a reconcile a child event started
        self._retries: dict[tuple[str, str], asyncio.Task[None]] = {}
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
            log.warning("could not read the RayService CRD (%s); relying on strict field validation", describe_error(err))
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
            log.warning("could not read the ModelDeployment CRD (%s)", describe_error(err))
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

    async def _run(self, key: tuple[str, str], body: Mapping[str, Any], trigger: str) -> ReconcileResult:
        """Reconciles in a worker thread; the caller holds the object's lock and notes a failure.

        The object's backoff (or a server's Retry-After) holds for every
        trigger, so a child's watch event cannot jump the queue.
        """
        loop = asyncio.get_running_loop()
        backoff = self._backoffs.get(key)
        if backoff is not None and (wait := backoff.not_before - loop.time()) > 0:
            await asyncio.sleep(wait)
        self.reconciles += 1
        self._reconciled.add(key)
        started = time.monotonic()
        try:
            if self.kuberay_missing:  # look again: KubeRay may have been upgraded since
                await asyncio.to_thread(self.check_kuberay)
            result = await asyncio.to_thread(reconcile, self.kube, copy.deepcopy(dict(body)), self.settings,
                                             attempt=backoff.failures if backoff else 0, now=self.clock(),
                                             kuberay_missing=self.kuberay_missing)
        except Exception as err:
            self.kube.metrics.observe_reconcile(trigger, time.monotonic() - started, classify(err).reason)
            raise
        self.kube.metrics.observe_reconcile(trigger, time.monotonic() - started)
        self._backoffs.pop(key, None)
        self._cancel_retry(key)  # whatever it would have done is done
        self._remember(key[0], key[1], result)
        return result

    def _note_failure(self, key: tuple[str, str], err: BaseException) -> Optional[float]:
        """Remembers a failed reconcile in the object's backoff; the seconds until the retry, None for none."""
        failure = classify(err)
        if failure.reason == "other":
            log.error("reconciling %s/%s failed unexpectedly", *key, exc_info=err)
        self._cancel_retry(key)  # whoever failed last retries: kopf, or a retry scheduled anew
        if not failure.retriable:
            self._backoffs.pop(key, None)  # only a new spec helps; its reconcile starts afresh
            return None
        backoff = self._backoffs.setdefault(key, _Backoff())
        delay = compute_backoff(err, backoff.failures, self.settings, jitter=random.random() * 0.2)
        backoff.failures += 1
        backoff.not_before = asyncio.get_running_loop().time() + delay
        return delay

    async def reconcile_body(self, body: Mapping[str, Any]) -> ReconcileResult:
        """Reconciles after the ModelDeployment's own change; a failure leaves as kopf's error, with our delay."""
        meta = body["metadata"]
        key = (meta["namespace"], meta["name"])
        async with self._lock(*key):
            try:
                return await self._run(key, body, OWN_TRIGGER)
            except Exception as err:
                delay = self._note_failure(key, err)
                if delay is None:
                    raise kopf.PermanentError(describe_error(err)) from err
                raise kopf.TemporaryError(f"{describe_error(err)}; retrying in {delay:.2f}s", delay=delay) from err

    async def on_child_event(self, kind: Kind, child: Mapping[str, Any], event_type: Optional[str]) -> None:
        """Reconciles the child's owner, read afresh, unless the event is our own echo."""
        owner = find_model_deployment(kind, child)
        if owner is None:
            return
        key = (child["metadata"]["namespace"], owner)
        async with self._lock(*key):
            # Checked under the lock: a reconcile in flight records what it left.
            if self.is_news(kind, child, event_type):
                await self._reconcile_latest(key, kind.kind.lower())

    async def _reconcile_latest(self, key: tuple[str, str], trigger: str) -> None:
        """Reconciles the ModelDeployment as the API server has it now (the caller holds its lock);
        a failure that time may fix schedules the retry."""
        try:
            body = await asyncio.to_thread(read_model_deployment, self.kube, *key)
            if body is None:
                return  # deleted; garbage collection removes the children
            await self._run(key, body, trigger)
        except Exception as err:
            delay = self._note_failure(key, err)
            if delay is None:
                # An invalid spec is in its status already, and every child event would repeat it.
                level = logging.DEBUG if isinstance(err, InvalidSpecError) else logging.WARNING
                log.log(level, "reconciling %s/%s failed: %s; waiting for a new spec", *key, describe_error(err))
                return
            log.warning("reconciling %s/%s failed: %s; retrying in %.2fs", *key, describe_error(err), delay)
            self._cancel_retry(key)
            self._retries[key] = asyncio.create_task(self._retry(key, trigger, delay))

    async def _retry(self, key: tuple[str, str], trigger: str, delay: float) -> None:
        await asyncio.sleep(delay)
        if self._retries.get(key) is asyncio.current_task():
            del self._retries[key]  # running now: no longer pending
        async with self._lock(*key):
            await self._reconcile_latest(key, trigger)

    def _cancel_retry(self, key: tuple[str, str]) -> None:
        task = self._retries.pop(key, None)
        if task is not None:
            task.cancel()

    async def close(self) -> None:
        """Cancels the pending retries (kopf waits for every task left when it stops)."""
        tasks = list(self._retries.values())
        self._retries.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def watch(self, body: Mapping[str, Any]) -> None:
        """Notes a ModelDeployment the watch reported, with the status of its Ready condition."""
        meta = body["metadata"]
        ready = find_condition((body.get("status") or {}).get("conditions"), READY)
        self._ready[(meta["namespace"], meta["name"])] = str((ready or {}).get("status") or "Unknown")

    def managed_state(self, leading: bool) -> ManagedState:
        """What the metrics' gauges show: the watched ModelDeployments and their children."""
        children = compute_child_counts([kind.kind for kind in CHILD_KINDS], [kind.kind for (_, _, kind) in self._seen])
        return ManagedState(leading=leading, ready=dict(self._ready), children=children)

    def is_retrying(self, namespace: str, name: str) -> bool:
        """True from a failed reconcile of the ModelDeployment that time may fix until one succeeds."""
        return (namespace, name) in self._backoffs

    def remembers(self, namespace: str, name: str) -> bool:
        """Whether anything about the ModelDeployment is held: its Ready, children, backoff, a pending retry."""
        key = (namespace, name)
        return (key in self._ready or key in self._reconciled or key in self._backoffs or key in self._retries
                or any(k[:2] == key for k in self._seen) or any(k[:2] == key for k in self._seen_clusters))

    def forget(self, namespace: str, name: str) -> None:
        """Drops what is remembered about a deleted ModelDeployment."""
        key = (namespace, name)
        self._ready.pop(key, None)
        self._reconciled.discard(key)
        self._backoffs.pop(key, None)
        self._cancel_retry(key)
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
