"""A replica's side of tenants' quotas: each request's tenant asks the
deployment's ledger before the engine sees it, gets the x-ratelimit-*
figures, runs at its tenant's priority, and settles its tokens when it ends.

The tenant is the name of the API key the request authenticated with
(ApiKeyAuth puts it in the request's state); nothing a client sends can
choose it, nor its priority.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from collections.abc import AsyncGenerator, AsyncIterable, Callable
from dataclasses import dataclass
from typing import Any, Optional

from shardserve.api.tenant_spec import VLLM_PRIORITY, TenantLimits, TenantsSpec
from shardserve.serve.telemetry.metrics import record_tenant_request, record_tenant_tokens
from shardserve.serve.telemetry.spans import record_tenant_decision_on_span
from shardserve.serve.tenants.ledger import Decision

logger = logging.getLogger(__name__)

DEFAULT_TENANT = "default"
# Where ApiKeyAuth leaves the authenticated key's name (request.state.tenant).
TENANT_STATE = "tenant"
_TOTAL_TOKENS = re.compile(rb'"total_tokens":\s*(\d+)')
# A token is about four bytes of English text; JSON around a prompt adds a little.
BYTES_PER_TOKEN = 4
# Completions that name no max_tokens are estimated at this many, or serving.maxTokens when smaller.
DEFAULT_COMPLETION_ESTIMATE = 256


def estimate_tokens(raw_body: bytes, body: Any, max_tokens_cap: Optional[int]) -> int:
    """What a request is debited when admitted: its body's bytes / 4 for the
    prompt, plus the completion it may ask for."""
    asked = getattr(body, "max_completion_tokens", None) or getattr(body, "max_tokens", None)
    completion = asked or min(DEFAULT_COMPLETION_ESTIMATE, max_tokens_cap or DEFAULT_COMPLETION_ESTIMATE)
    n = getattr(body, "n", None) or 1
    return len(raw_body) // BYTES_PER_TOKEN + int(completion) * int(n)


def usage_tokens(usage: Any) -> Optional[int]:
    """prompt + completion tokens of an OpenAI usage object, when it says."""
    if not isinstance(usage, dict):
        return None
    total = usage.get("total_tokens")
    return int(total) if isinstance(total, int) else None


@dataclass
class Admission:
    tenant: str
    limits: TenantLimits
    decision: Decision
    lease: str
    estimate: int


class TenantQuotas:
    """Asks `ledger()` (the deployment's QuotaLedger actor handle) for each request."""

    def __init__(self, tenants: TenantsSpec, ledger: Callable[[], Any], lease_s: float,
                 max_tokens_cap: Optional[int] = None, application: str = ""):
        self.tenants, self._ledger_factory, self._ledger = tenants, ledger, None
        self.application = application
        self.lease_s, self.max_tokens_cap = lease_s, max_tokens_cap

    def _actor(self) -> Any:
        if self._ledger is None:
            self._ledger = self._ledger_factory()
        return self._ledger

    async def admit(self, tenant: Optional[str], raw_body: bytes, body: Any) -> Admission:
        name = tenant or DEFAULT_TENANT
        limits = self.tenants.limits_for(tenant)
        estimate = estimate_tokens(raw_body, body, self.max_tokens_cap)
        lease = uuid.uuid4().hex
        try:
            decision = await self._actor().admit.remote(name, limits, estimate, lease, self.lease_s)
        except Exception as err:  # noqa: BLE001 - quotas fail open: the endpoint stays up without its ledger
            logger.error("tenant ledger unreachable, admitting %s's request: %r", name, err)
            self._ledger = None
            decision = Decision(admitted=True)
        return Admission(name, limits, decision, lease, estimate)

    def finish(self, admission: Admission, used: Optional[int]) -> None:
        """The request ended (`used`: its real prompt + completion tokens, when known)."""
        if not admission.decision.admitted:
            return
        if used is not None:
            record_tenant_tokens(self.application, admission.tenant, used)
        correction = used - admission.estimate if used is not None else 0
        try:
            self._actor().finish.remote(admission.tenant, admission.lease, correction)
        except Exception as err:  # noqa: BLE001 - a lost settlement only loosens the quota
            logger.warning("settling %s's request with the tenant ledger failed: %r", admission.tenant, err)


def apply_priority(body: Any, limits: TenantLimits) -> None:
    """The request runs at its tenant's class, whatever it asked for."""
    if hasattr(body, "priority"):
        body.priority = VLLM_PRIORITY[limits.priority]


def usage_from_json(content: bytes) -> Optional[int]:
    try:
        return usage_tokens(json.loads(content).get("usage"))
    except (ValueError, AttributeError):
        return None


def quota_message(admission: Admission) -> str:
    limits, decision = admission.limits, admission.decision
    wait = f"; retry after {max(1, round(decision.retry_after_s))}s"
    if decision.reason == "requests":
        return f"tenant {admission.tenant!r} reached its limit of {limits.requests_per_minute} requests per minute{wait}"
    if decision.reason == "tokens":
        return (f"tenant {admission.tenant!r} reached its limit of {limits.tokens_per_minute} tokens per minute "
                f"(this request is estimated at {admission.estimate}){wait}")
    if decision.reason == "concurrency":
        return (f"tenant {admission.tenant!r} has {limits.max_concurrent_requests} requests in flight, its limit"
                f"{wait}")
    return (f"this request is estimated at {admission.estimate} tokens, more than tenant {admission.tenant!r}'s "
            f"{limits.tokens_per_minute} tokens per minute: ask for fewer max_tokens or send a shorter prompt")


def record_tenant_decision(application: str, admission: Admission) -> None:
    outcome = "admitted" if admission.decision.admitted else str(admission.decision.reason)
    record_tenant_request(application, admission.tenant, outcome)
    record_tenant_decision_on_span(admission.tenant, outcome)


async def settled_stream(chunks: AsyncIterable[Any], quotas: TenantQuotas,
                         admission: Admission) -> AsyncGenerator[Any, None]:
    """Passes a streamed answer on and settles its tokens when it ends, with the
    usage its last chunks report (stream_options.include_usage), else the estimate."""
    used: Optional[int] = None
    try:
        async for chunk in chunks:
            data = chunk.encode() if isinstance(chunk, str) else chunk
            if isinstance(data, bytes) and b'"total_tokens"' in data:
                found = _TOTAL_TOKENS.findall(data)
                used = int(found[-1]) if found else used
            yield chunk
    finally:
        quotas.finish(admission, used)
