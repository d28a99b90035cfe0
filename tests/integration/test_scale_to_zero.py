"""Scale to zero and back on the real local stack: the waking request is held, not refused.

With no replica, HAProxy hands the request to the head's Serve proxy (its
fallback server); the proxy holds it, the policy sees it queued at the handle
and starts a replica. In a cluster the head stays in the serve Service for
this reason (`excludeHeadPodFromServeSvc: false` when minReplicas is 0).
"""

import time

import httpx
import pytest

from tests.integration.autoscale_status import wait_for_status
from tests.integration.conftest import StackKind, Stacks, write_spec
from tests.integration.stack import LocalStack

APP = "zero"
pytestmark = [pytest.mark.integration, pytest.mark.stacks(APP)]


@pytest.fixture(scope="module")
def zero(stacks: Stacks) -> LocalStack:
    return stacks.get(APP, StackKind(spec=lambda tmp: write_spec(
        tmp, APP,
        engine={"maxModelLen": 256, "dtype": "float32", "kvCacheMemory": "256Mi", "enforceEager": True},
        replicas=None,
        autoscaling={"minReplicas": 0, "maxReplicas": 1, "upscaleDelaySeconds": 0, "downscaleDelaySeconds": 3},
        serving={"maxOngoingRequests": 16, "maxQueuedRequests": 64, "requestTimeoutSeconds": 240},
    )))


def test_idle_deployment_goes_to_zero_and_the_next_request_wakes_it(zero):
    idle_s, _ = wait_for_status(APP, lambda r: r["replicas_running"] == 0 and r["replicas_desired"] == 0, 180,
                                "scale down to zero")
    started = time.monotonic()
    reply = httpx.post(f"{zero.base_url}/v1/completions", timeout=240,
                       json={"model": "tiny", "prompt": "Once upon a time", "max_tokens": 8})
    woke_s = time.monotonic() - started
    assert reply.status_code == 200, reply.text
    assert reply.json()["choices"][0]["text"]
    print(f"\nat zero {idle_s:.0f}s after start-up; the waking request was answered after {woke_s:.1f}s")
    # Idle again, it goes back to zero (and the stack stops from a steady state).
    wait_for_status(APP, lambda r: r["replicas_running"] == 0 and r["replicas_desired"] == 0, 180,
                    "scale down to zero again")
