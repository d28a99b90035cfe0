"""classify(): one reading of a failed reconcile for metrics, retries and status (pure)."""

from __future__ import annotations

import kopf
import pytest

from shardserve_operator.api_errors import ApiTransportError, build_api_error
from shardserve_operator.failures import (
    Failure,
    HeldBackError,
    InvalidSpecError,
    NotOwnedError,
    classify,
    describe_error,
)
from shardserve_operator.metrics import ERROR_REASONS

# err -> (metrics reason, retriable, ResourcesApplied's reason, polled)
CASES = [
    (InvalidSpecError("invalid spec: x"), ("invalid_spec", False, "InvalidSpec", False)),
    (NotOwnedError("Service ns/x exists", delay=1), ("not_owned", True, "NotOwned", True)),
    (HeldBackError("x", "KubeRayUnsupported", delay=1), ("kuberay_unsupported", True, "KubeRayUnsupported", True)),
    (HeldBackError("x", "ClaimNotFound", delay=1), ("claim_not_found", True, "ClaimNotFound", True)),
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


def test_a_kopf_error_is_read_by_its_cause():
    try:
        raise kopf.TemporaryError("retrying") from build_api_error(429)
    except kopf.TemporaryError as err:
        assert classify(err) == Failure("throttled", True)
    assert not classify(kopf.PermanentError("no uid")).retriable


def test_errors_read_in_the_servers_words_or_with_their_type():
    err = build_api_error(500, "Internal Server Error", '{"kind": "Status", "message": "etcdserver: timeout"}')
    assert describe_error(err) == "HTTP 500 Internal Server Error: etcdserver: timeout"
    assert describe_error(KeyError("spec")) == "KeyError: 'spec'"
