"""The typed API errors: built once from an HTTP answer (pure), and raised by Kube.request against the emulator."""

from __future__ import annotations

import asyncio
import json
import socket

import pytest

from shardserve_operator.api_errors import (
    ApiBadRequest,
    ApiConflict,
    ApiError,
    ApiForbidden,
    ApiInvalid,
    ApiNotFound,
    ApiServerError,
    ApiThrottled,
    ApiTimeout,
    ApiTransportError,
    build_api_error,
)
from shardserve_operator.kinds import SERVICE
from shardserve_operator.kube import Kube, build_api_client
from shardserve_operator.metrics import OperatorMetrics


def _status(code: int, message: str) -> str:
    """The Status object the API server sends with a refusal."""
    return json.dumps({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code, "message": message})


@pytest.mark.parametrize("status, cls", [
    (400, ApiBadRequest), (403, ApiForbidden), (404, ApiNotFound), (408, ApiTimeout), (409, ApiConflict),
    (422, ApiInvalid), (429, ApiThrottled), (500, ApiServerError), (503, ApiServerError), (504, ApiServerError),
    (401, ApiError), (405, ApiError), (410, ApiError),
])
def test_each_status_gets_its_class(status, cls):
    err = build_api_error(status, "Reason", _status(status, "said the server"))
    assert type(err) is cls and isinstance(err, ApiError)
    assert (err.status, err.reason, err.message) == (status, "Reason", "said the server")


def test_an_error_reads_as_the_status_the_reason_and_the_servers_message():
    err = build_api_error(409, "Conflict", _status(409, 'Operation cannot be fulfilled on rayservices "tiny"'))
    assert str(err) == 'HTTP 409 Conflict: Operation cannot be fulfilled on rayservices "tiny"'
    assert str(build_api_error(502, "Bad Gateway", "<html>proxy</html>")) == "HTTP 502 Bad Gateway"
    assert str(ApiTransportError("ConnectionRefusedError: refused")) == \
        "no answer from the API server: ConnectionRefusedError: refused"
    assert ApiTransportError("x").status == 0
    # What was being done comes first; kube.py names the request, apply.py the step.
    assert str(err.during("update RayService default/tiny")) == \
        'update RayService default/tiny: HTTP 409 Conflict: Operation cannot be fulfilled on rayservices "tiny"'


@pytest.mark.parametrize("headers, retry_after", [
    ({"Retry-After": "3"}, 3.0),
    ({"retry-after": "0.5"}, 0.5),
    ({"Retry-After": "-2"}, 0.0),
    ({"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}, None),  # date form: not honoured, the backoff applies
    ({}, None),
])
def test_retry_after_is_kept_in_seconds(headers, retry_after):
    assert build_api_error(429, "Too Many Requests", "", headers).retry_after == retry_after


# ---------------------------------------------------------------- Kube.request raises them

@pytest.mark.asyncio
async def test_kube_raises_the_typed_error_with_the_servers_message(cluster):
    kube = Kube(build_api_client(cluster.url))
    path = SERVICE.path("default")
    cluster.emulator.inject("POST", r"/services$", 429, retry_after="2", message="slow down")
    with pytest.raises(ApiThrottled) as throttled:
        await asyncio.to_thread(kube.request, "POST", path, {"apiVersion": "v1", "kind": "Service",
                                                             "metadata": {"name": "x"}, "spec": {}})
    assert (throttled.value.status, throttled.value.message, throttled.value.retry_after) == (429, "slow down", 2.0)
    assert str(throttled.value) == f"POST {path}: HTTP 429 Too Many Requests: slow down"
    assert await asyncio.to_thread(kube.get, SERVICE, "default", "absent") is None  # a 404 is an answer
    with pytest.raises(ApiNotFound):
        await asyncio.to_thread(kube.request, "DELETE", SERVICE.path("default", "absent"))


@pytest.mark.asyncio
async def test_no_answer_is_a_transport_error_and_counts_as_error():
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    metrics = OperatorMetrics()
    kube = Kube(build_api_client(f"http://127.0.0.1:{port}"), metrics)
    with pytest.raises(ApiTransportError) as err:
        await asyncio.to_thread(kube.get, SERVICE, "default", "x")
    assert err.value.status == 0 and "no answer from the API server" in str(err.value)
    assert b'code="error",resource="services",verb="get"} 1.0' in metrics.render()[0]
