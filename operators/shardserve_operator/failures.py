"""Every way a reconcile fails, and the one reading of it: classify() (pure).

Three questions are asked of a failed reconcile: under which bounded reason
the metrics count it, whether time may fix it (then it is retried with
backoff) or only a new spec can, and which reason ResourcesApplied gives
when status reports it. classify() answers all three from one table, so a
retry, a condition and a metric never disagree about the same error.

  error                                   reason               retriable  ResourcesApplied
  InvalidSpecError                        invalid_spec         no         InvalidSpec
  NotOwnedError                           not_owned            polled     NotOwned
  HeldBackError (KubeRayUnsupported)      kuberay_unsupported  polled     KubeRayUnsupported
  HeldBackError (ClaimNotFound)           claim_not_found      polled     ClaimNotFound
  ApiConflict                             conflict             yes        ApplyFailed
  ApiThrottled                            throttled            yes        ApplyFailed
  ApiServerError                          server_error         yes        ApplyFailed
  ApiTimeout                              timeout              yes        ApplyFailed
  ApiNotFound                             not_found            yes        ApplyFailed
  ApiForbidden (RBAC still being set up)  forbidden            yes        ApplyFailed
  ApiTransportError                       transport            yes        ApplyFailed
  any other ApiError (400, 401, 422, ...) rejected             no         ApplyFailed
  anything else (a bug)                   other                yes        ApplyFailed

"polled": nothing announces when it is fixed (a name freed, a claim
created, KubeRay upgraded), so it is looked at again after a fixed while
(conflict_retry_seconds) instead of a growing backoff. compute_backoff is
the one delay every retry path waits (see controller.py for the paths).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from shardserve_operator.api_errors import (
    ApiConflict,
    ApiError,
    ApiForbidden,
    ApiNotFound,
    ApiServerError,
    ApiThrottled,
    ApiTimeout,
    ApiTransportError,
)
from shardserve_operator.settings import OperatorSettings
from shardserve_operator.status import APPLY_FAILED, CLAIM_NOT_FOUND, INVALID_SPEC, KUBERAY_UNSUPPORTED, NOT_OWNED


class InvalidSpecError(Exception):
    """The object is invalid (its spec failed validation); only a new generation can fix it."""


class NotOwnedError(Exception):
    """A child's name is taken by an object this ModelDeployment does not control."""


class HeldBackError(Exception):
    """Nothing was written: the cluster lacks what the children need (`reason` is ResourcesApplied's)."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Failure:
    """What a failed reconcile means to metrics, retries and status."""

    reason: str  # the metrics' label, one of metrics.ERROR_REASONS
    retriable: bool  # False: only a new spec can fix it
    condition_reason: str = APPLY_FAILED  # ResourcesApplied's reason when status reports it
    polled: bool = False  # nothing announces the fix: look again after a fixed while, not a growing backoff


_API_FAILURES: dict[type[ApiError], Failure] = {
    ApiConflict: Failure("conflict", True),
    ApiThrottled: Failure("throttled", True),
    ApiServerError: Failure("server_error", True),
    ApiTimeout: Failure("timeout", True),
    ApiNotFound: Failure("not_found", True),
    ApiForbidden: Failure("forbidden", True),
    ApiTransportError: Failure("transport", True),
}
_HELD_BACK_REASONS = {KUBERAY_UNSUPPORTED: "kuberay_unsupported", CLAIM_NOT_FOUND: "claim_not_found"}


def classify(err: BaseException) -> Failure:
    """The one reading of a reconcile's failure (see the table above)."""
    if isinstance(err, InvalidSpecError):
        return Failure("invalid_spec", False, INVALID_SPEC)
    if isinstance(err, NotOwnedError):
        return Failure("not_owned", True, NOT_OWNED, polled=True)
    if isinstance(err, HeldBackError):
        return Failure(_HELD_BACK_REASONS.get(err.reason, "other"), True, err.reason, polled=True)
    if isinstance(err, ApiError):
        return _API_FAILURES.get(type(err), Failure("rejected", False))
    return Failure("other", True)


def compute_retry_delay(
    attempt: int, *, base: float, cap: float, retry_after: Optional[float] = None, jitter: float = 0.0
) -> float:
    """Exponential backoff (base * 2**attempt, capped, stretched by up to `jitter`); never shorter than Retry-After."""
    delay: float = min(cap, base * (2 ** max(0, attempt))) * (1.0 + max(0.0, jitter))
    return max(delay, retry_after or 0.0)


def compute_backoff(err: BaseException, attempt: int, settings: OperatorSettings, jitter: float = 0.0) -> float:
    """How long every trigger of an object waits after `err`, its `attempt`-th failure in a row (0 for the first)."""
    if classify(err).polled:
        return settings.conflict_retry_seconds
    retry_after = err.retry_after if isinstance(err, ApiError) else None
    return compute_retry_delay(attempt, base=settings.retry_base_seconds, cap=settings.retry_max_seconds,
                               retry_after=retry_after, jitter=jitter)


def describe_error(err: BaseException) -> str:
    """The error as status and logs show it: an API error in the server's words, anything else with its type."""
    if isinstance(err, ApiError):
        return str(err)
    return f"{type(err).__name__}: {err}"
