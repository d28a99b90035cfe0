"""classify(): one reading of a failed reconcile for metrics, retries and status (pure)."""

from __future__ import annotations

import pytest

from shardserve_operator.api_errors import ApiTransportError, build_api_error
from shardserve_operator.failures import (
    HeldBackError,
    InvalidSpecError,
    NotOwnedError,
    classify,
    compute_backoff,
    describe_error,
)
from shardserve_operator.metrics import ERROR_REASONS
from shardserve_operator.settings import OperatorSettings

# err -> (metrics reason, retriable, ResourcesApplied's reason, polled)
CASES = [
    (InvalidSpecError("invalid spec: x"), ("invalid_spec", False, "InvalidSpec", False)),
    (NotOwnedError("Service ns/x exists"), ("not_owned", True, "NotOwned", True)),
    (HeldBackError("x", "KubeRayUnsupported"), ("kuberay_unsupported", True, "KubeRayUnsupported", True)),
    (HeldBackError("x", "ClaimNotFound"), ("claim_not_found", True, "ClaimNotFound", True)),
    (build_api_error(409), ("conflict", True, "ApplyFailed", False)),
    (build_api_error(429), ("throttled", True, "ApplyFailed", False)),
    (build_api_error(500), ("server_error", True, "ApplyFailed", False)),
    (build_api_error(503), ("server_error", True, "ApplyFailed", False)),
    (build_api_error(408), ("timeout", True, "ApplyFailed", False)),
    (build_api_error(404), ("not_found", True, "ApplyFailed", False)),
    (build_api_error(403), ("forbidden", True, "ApplyFailed", False)),
    (ApiTransportError("ProtocolError: reset"), ("transport", True, "ApplyFailed", False)),
    (build_api_error(400), ("rejected", False, "ApplyFailed", False)),
    (build_api_error(401), ("rejected", False, "ApplyFailed", False)),
    (build_api_error(422), ("rejected", False, "ApplyFailed", False)),
    (ValueError("bug"), ("other", True, "ApplyFailed", False)),
]


@pytest.mark.parametrize("err, expected", CASES, ids=[f"{type(e).__name__}-{i}" for i, (e, _) in enumerate(CASES)])
def test_classify(err, expected):
    failure = classify(err)
    assert (failure.reason, failure.retriable, failure.condition_reason, failure.polled) == expected


def test_every_metric_reason_is_one_classify_gives():
    """The metrics pre-create a series per reason: a reason classify never gives, or one they lack, is a bug."""
    assert {classify(err).reason for err, _ in CASES} == set(ERROR_REASONS)


SETTINGS = OperatorSettings(retry_base_seconds=0.5, retry_max_seconds=60, conflict_retry_seconds=30)


@pytest.mark.parametrize("err, attempt, delay", [
    (build_api_error(503), 0, 0.5),
    (build_api_error(409), 3, 4.0),
    (ApiTransportError("reset"), 10, 60.0),  # capped
    (build_api_error(429, headers={"Retry-After": "7"}), 0, 7.0),  # the server's wait wins when longer
    (build_api_error(429, headers={"Retry-After": "1"}), 4, 8.0),  # ... and never shortens the backoff
    (ValueError("bug"), 1, 1.0),
    (NotOwnedError("x"), 0, 30.0),  # polled: the same while, however often
    (HeldBackError("x", "ClaimNotFound"), 9, 30.0),
])
def test_backoff(err, attempt, delay):
    assert compute_backoff(err, attempt, SETTINGS) == pytest.approx(delay)


def test_errors_read_in_the_servers_words_or_with_their_type():
    err = build_api_error(500, "Internal Server Error", '{"kind": "Status", "message": "etcdserver: timeout"}')
    assert describe_error(err) == "HTTP 500 Internal Server Error: etcdserver: timeout"
    assert describe_error(KeyError("spec")) == "KeyError: 'spec'"
