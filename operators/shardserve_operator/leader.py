"""Leader election on a coordination.k8s.io/v1 Lease, as client-go does it.

Only the replica holding the Lease runs kopf; the others wait. The holder
renews every retry period; a candidate takes the Lease over once its
renewTime is older than leaseDurationSeconds. Every write carries the
resourceVersion that was read, so when two candidates race, the API server
lets exactly one win (409 for the other). A leader that cannot renew within
the renew deadline stops acting (the process then exits and restarts as a
candidate), so two replicas never act at once for longer than the deadline.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Optional

from shardserve_operator.api_errors import ApiConflict
from shardserve_operator.kinds import LEASE
from shardserve_operator.kube import Kube
from shardserve_operator.settings import LeaderElection

log = logging.getLogger(__name__)

_MICROTIME = "%Y-%m-%dT%H:%M:%S.%fZ"


def format_microtime(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime(_MICROTIME)


def parse_microtime(value: Optional[str]) -> Optional[datetime]:
    if not value:
        return None
    for fmt in (_MICROTIME, "%Y-%m-%dT%H:%M:%SZ"):
        try:
            return datetime.strptime(value, fmt).replace(tzinfo=UTC)
        except ValueError:
            continue
    return None


def compute_lease_claim(
    spec: Optional[Mapping[str, Any]], identity: str, now: datetime, duration_seconds: float
) -> Optional[dict[str, Any]]:
    """The Lease spec to write to take or keep the lease now, or None while another holder's lease is valid."""
    spec = spec or {}
    holder = spec.get("holderIdentity") or ""
    renewed = parse_microtime(spec.get("renewTime")) or parse_microtime(spec.get("acquireTime"))
    held_for = float(spec.get("leaseDurationSeconds") or duration_seconds)
    valid = bool(holder) and renewed is not None and now < renewed + timedelta(seconds=held_for)
    if holder != identity and valid:
        return None
    claim = {
        "holderIdentity": identity,
        "leaseDurationSeconds": int(duration_seconds),
        "acquireTime": spec.get("acquireTime") if holder == identity else format_microtime(now),
        "renewTime": format_microtime(now),
        "leaseTransitions": int(spec.get("leaseTransitions") or 0) + (0 if holder in (identity, "") else 1),
    }
    return claim


class LeaseElector:
    """Acquires, renews and releases one Lease for one identity. Blocking calls run in threads."""

    def __init__(self, kube: Kube, config: LeaderElection):
        self.kube = kube
        self.config = config
        self.is_leader = False

    def _try(self) -> bool:
        """One acquire-or-renew attempt (blocking)."""
        cfg = self.config
        now = datetime.now(UTC)
        lease = self.kube.get(LEASE, cfg.lease_namespace, cfg.lease_name)
        claim = compute_lease_claim((lease or {}).get("spec"), cfg.identity, now, cfg.lease_duration_seconds)
        if claim is None:
            return False
        body: dict[str, Any] = {"apiVersion": LEASE.api_version, "kind": LEASE.kind,
                "metadata": {"name": cfg.lease_name, "namespace": cfg.lease_namespace}, "spec": claim}
        try:
            if lease is None:
                self.kube.request("POST", LEASE.path(cfg.lease_namespace), body)
            else:
                body["metadata"]["resourceVersion"] = lease["metadata"].get("resourceVersion")
                self.kube.request("PUT", LEASE.path(cfg.lease_namespace, cfg.lease_name), body)
        except ApiConflict:  # another candidate wrote first
            return False
        return True

    async def _attempt(self) -> bool:
        try:
            return await asyncio.to_thread(self._try)
        except Exception as err:  # API unavailable: not leader this round
            log.warning("leader election: %s", err)
            return False

    async def acquire(self, stop: asyncio.Event) -> bool:
        """Waits until this identity holds the Lease (True) or `stop` is set (False)."""
        announced = False
        while not stop.is_set():
            if await self._attempt():
                self.is_leader = True
                log.info("leader election: %s holds lease %s/%s", self.config.identity,
                         self.config.lease_namespace, self.config.lease_name)
                return True
            if not announced:
                log.info("leader election: waiting for lease %s/%s", self.config.lease_namespace, self.config.lease_name)
                announced = True
            try:
                await asyncio.wait_for(stop.wait(), self.config.retry_period_seconds)
            except TimeoutError:
                pass
        return False

    async def hold(self) -> None:
        """Renews until a renewal fails for longer than the renew deadline; then returns."""
        loop = asyncio.get_running_loop()
        renewed = loop.time()
        while True:
            await asyncio.sleep(self.config.retry_period_seconds)
            if await self._attempt():
                renewed = loop.time()
            elif loop.time() - renewed > self.config.renew_deadline_seconds:
                self.is_leader = False
                log.error("leader election: lost lease %s/%s", self.config.lease_namespace, self.config.lease_name)
                return

    async def release(self) -> None:
        """Hands the Lease back at shutdown so a standby takes over at once (best effort)."""
        if not self.is_leader:
            return
        self.is_leader = False
        cfg = self.config

        def release() -> None:
            lease = self.kube.get(LEASE, cfg.lease_namespace, cfg.lease_name)
            if not lease or (lease.get("spec") or {}).get("holderIdentity") != cfg.identity:
                return
            lease["spec"].update({"holderIdentity": None, "leaseDurationSeconds": 1,
                                  "renewTime": format_microtime(datetime.now(UTC))})
            lease["metadata"].pop("managedFields", None)
            self.kube.request("PUT", LEASE.path(cfg.lease_namespace, cfg.lease_name), lease)

        try:
            await asyncio.to_thread(release)
        except Exception as err:
            log.warning("leader election: could not release the lease: %s", err)
