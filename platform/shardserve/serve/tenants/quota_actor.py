"""One ledger per deployment, shared by its replicas: a named Ray actor.

Every replica asks it before a tenant's request runs and tells it when the
request ends, so requests a minute, tokens a minute and concurrency hold
across replicas exactly as one ledger counts them (tokens up to the gap
between a request's estimate and its usage, until it settles). The cost is
one actor call per admitted request; the end is reported without waiting.
The actor is detached, so a replica's restart keeps the counts; it needs no
CPU. If it cannot be reached, requests are admitted (and logged): quotas
fail open rather than take the endpoint down.
"""

from __future__ import annotations

import time
from typing import Any, Optional

import ray

from shardserve.api.contract import KV_NAMESPACE
from shardserve.api.tenant_spec import TenantLimits
from shardserve.serve.tenants.ledger import Decision, Ledger, TenantUsage


@ray.remote(num_cpus=0)  # async methods: Ray runs up to 1000 calls at once
class QuotaLedger:
    def __init__(self) -> None:
        self._ledger = Ledger()

    async def admit(self, tenant: str, limits: TenantLimits, tokens: int, lease: str, lease_s: float) -> Decision:
        now = time.monotonic()
        return self._ledger.admit(tenant, limits, tokens, lease, now + lease_s, now)

    async def finish(self, tenant: str, lease: str, token_correction: int) -> None:
        self._ledger.finish(tenant, lease, token_correction, time.monotonic())

    async def usage(self) -> list[TenantUsage]:
        return self._ledger.usage(time.monotonic())


def _name(app: str) -> str:
    return f"quota-ledger/{app}"


def quota_ledger(app: str) -> Any:
    """The deployment's ledger actor, started by the first replica that asks."""
    return QuotaLedger.options(  # type: ignore[attr-defined]
        name=_name(app), namespace=KV_NAMESPACE, get_if_exists=True, lifetime="detached",
    ).remote()


def read_usage(app: str, timeout_s: float = 5.0) -> Optional[list[TenantUsage]]:
    """The tenants' standing in `app`'s ledger; None when it has none (no
    tenants, or no request yet)."""
    try:
        ledger = ray.get_actor(_name(app), namespace=KV_NAMESPACE)
    except ValueError:
        return None
    usage: list[TenantUsage] = ray.get(ledger.usage.remote(), timeout=timeout_s)
    return usage
