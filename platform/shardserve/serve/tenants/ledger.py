"""Tenants' quotas as numbers (pure: no Ray, no I/O, time passed in).

Requests and tokens a minute are token buckets: a bucket holds up to a
minute's allowance and refills evenly, so a tenant may burst its whole
minute and then continues at the rate. Tokens are debited by an estimate
when a request is admitted and settled against its real usage when it
ends; a settlement past the bucket's level leaves it in debt, repaid by the
refill. Concurrent requests are leases, which lapse at their deadline so a
replica that dies mid-request does not hold a tenant's slots forever.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

from shardserve.api.tenant_spec import TenantLimits

MINUTE_S = 60.0
NEAR_LIMIT = 0.2  # of a minute's allowance


@dataclass
class Bucket:
    capacity: float
    level: float
    updated: float

    @property
    def rate(self) -> float:
        return self.capacity / MINUTE_S

    def refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + max(0.0, now - self.updated) * self.rate)
        self.updated = now

    def wait_for(self, amount: float) -> float:
        """Seconds until `amount` is in the bucket (after `refill`)."""
        return max(0.0, (amount - self.level) / self.rate)

    def until_full(self) -> float:
        return max(0.0, (self.capacity - self.level) / self.rate)


@dataclass
class TenantState:
    requests: Optional[Bucket] = None
    tokens: Optional[Bucket] = None
    leases: dict[str, float] = field(default_factory=dict)  # lease id -> deadline
    max_concurrent: Optional[int] = None  # as of the last request
    refused: dict[str, int] = field(default_factory=dict)  # reason -> count
    last_refused: float = -math.inf


@dataclass(frozen=True)
class Decision:
    """Whether a request is admitted; if not, why (`requests`, `tokens`, `concurrency`,
    `too_large`) and when to retry; the bucket figures for x-ratelimit-* headers."""

    admitted: bool
    reason: Optional[str] = None
    retry_after_s: float = 0.0
    limit_requests: Optional[int] = None
    remaining_requests: Optional[int] = None
    reset_requests_s: float = 0.0
    limit_tokens: Optional[int] = None
    remaining_tokens: Optional[int] = None
    reset_tokens_s: float = 0.0


def _bucket(existing: Optional[Bucket], capacity: Optional[int], now: float) -> Optional[Bucket]:
    """The tenant's bucket at the current limit: a changed limit keeps what was spent."""
    if capacity is None:
        return None
    if existing is None:
        return Bucket(float(capacity), float(capacity), now)
    if existing.capacity != capacity:
        spent = existing.capacity - existing.level
        existing.capacity, existing.level = float(capacity), float(capacity) - spent
    existing.refill(now)
    return existing


class Ledger:
    """Every tenant's buckets and leases."""

    def __init__(self) -> None:
        self.tenants: dict[str, TenantState] = {}

    def admit(self, tenant: str, limits: TenantLimits, tokens: int, lease: str, deadline: float,
              now: float) -> Decision:
        state = self.tenants.setdefault(tenant, TenantState())
        state.requests = _bucket(state.requests, limits.requests_per_minute, now)
        state.tokens = _bucket(state.tokens, limits.tokens_per_minute, now)
        state.leases = {k: d for k, d in state.leases.items() if d > now}
        reason, wait = None, 0.0
        if state.tokens is not None and tokens > state.tokens.capacity:
            reason = "too_large"
        elif state.requests is not None and state.requests.level < 1:
            reason, wait = "requests", state.requests.wait_for(1)
        elif state.tokens is not None and state.tokens.level < tokens:
            reason, wait = "tokens", state.tokens.wait_for(tokens)
        elif limits.max_concurrent_requests is not None and len(state.leases) >= limits.max_concurrent_requests:
            reason, wait = "concurrency", 1.0
        state.max_concurrent = limits.max_concurrent_requests
        if reason is not None:
            state.refused[reason] = state.refused.get(reason, 0) + 1
            state.last_refused = now
        else:
            if state.requests is not None:
                state.requests.level -= 1
            if state.tokens is not None:
                state.tokens.level -= tokens
            if limits.max_concurrent_requests is not None:
                state.leases[lease] = deadline
        return _decision(state, reason, wait)

    def finish(self, tenant: str, lease: str, token_correction: int, now: float) -> None:
        """A request ended: its lease ends, and its token debit is corrected by
        `token_correction` (real usage minus the estimate)."""
        state = self.tenants.get(tenant)
        if state is None:
            return
        state.leases.pop(lease, None)
        if state.tokens is not None and token_correction:
            state.tokens.refill(now)
            state.tokens.level = min(state.tokens.capacity, state.tokens.level - token_correction)

    def usage(self, now: float) -> list[TenantUsage]:
        """Each tenant's standing, for `shardserve status`."""
        out = []
        for name, state in sorted(self.tenants.items()):
            for bucket in (state.requests, state.tokens):
                if bucket is not None:
                    bucket.refill(now)
            in_flight = sum(1 for deadline in state.leases.values() if deadline > now)
            out.append(TenantUsage(
                tenant=name,
                requests_left=_left(state.requests), requests_limit=_limit(state.requests),
                tokens_left=_left(state.tokens), tokens_limit=_limit(state.tokens),
                in_flight=in_flight, max_in_flight=state.max_concurrent, refused=dict(state.refused),
                near_limit=(now - state.last_refused < MINUTE_S
                            or any(b is not None and b.level <= NEAR_LIMIT * b.capacity
                                   for b in (state.requests, state.tokens))
                            or (state.max_concurrent is not None and in_flight >= state.max_concurrent)),
            ))
        return out


@dataclass(frozen=True)
class TenantUsage:
    """A tenant's buckets and leases now. `near_limit`: refused in the last
    minute, a bucket at a fifth or less, or every concurrent slot taken."""

    tenant: str
    requests_left: Optional[int]
    requests_limit: Optional[int]
    tokens_left: Optional[int]
    tokens_limit: Optional[int]
    in_flight: int
    max_in_flight: Optional[int]
    refused: dict[str, int]
    near_limit: bool


def _left(bucket: Optional[Bucket]) -> Optional[int]:
    return max(0, math.floor(bucket.level)) if bucket else None


def _limit(bucket: Optional[Bucket]) -> Optional[int]:
    return int(bucket.capacity) if bucket else None


def _decision(state: TenantState, reason: Optional[str], wait: float) -> Decision:
    requests, tokens = state.requests, state.tokens
    return Decision(
        admitted=reason is None, reason=reason, retry_after_s=wait,
        limit_requests=_limit(requests),
        remaining_requests=_left(requests),
        reset_requests_s=requests.until_full() if requests else 0.0,
        limit_tokens=_limit(tokens),
        remaining_tokens=_left(tokens),
        reset_tokens_s=tokens.until_full() if tokens else 0.0,
    )


def format_reset(seconds: float) -> str:
    """OpenAI's duration form for x-ratelimit-reset-*: 1s, 6m0s, 20ms."""
    if seconds < 1:
        return f"{max(0, round(seconds * 1000))}ms"
    minutes, rest = divmod(seconds, 60)
    return f"{int(minutes)}m{rest:.0f}s" if minutes else f"{rest:.3g}s"


def ratelimit_headers(decision: Decision) -> dict[str, str]:
    """The x-ratelimit-* headers OpenAI clients read, for the limits the tenant has."""
    headers = {}
    if decision.limit_requests is not None:
        headers.update({"x-ratelimit-limit-requests": str(decision.limit_requests),
                        "x-ratelimit-remaining-requests": str(decision.remaining_requests),
                        "x-ratelimit-reset-requests": format_reset(decision.reset_requests_s)})
    if decision.limit_tokens is not None:
        headers.update({"x-ratelimit-limit-tokens": str(decision.limit_tokens),
                        "x-ratelimit-remaining-tokens": str(decision.remaining_tokens),
                        "x-ratelimit-reset-tokens": format_reset(decision.reset_tokens_s)})
    if not decision.admitted and decision.reason != "too_large":
        headers["retry-after"] = str(max(1, math.ceil(decision.retry_after_s)))
    return headers
