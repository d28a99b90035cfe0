"""Queue-depth autoscaling and backpressure on the real local stack.

A burst of streams fills the engine's batch (maxNumSeqs 2), so requests wait
in vLLM's queue; the policy adds a second replica, both replicas serve, and
once the load stops it goes back to one. Every request must be answered
throughout. What decided each change is read from the policy's own records:
its latest decision (`shardserve status autoscale --json`, reason and
inputs) and each change of mind it logs in the stack's Serve controller log.
"""

import ast
import asyncio
import re
import threading
from collections import Counter
from dataclasses import dataclass

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.autoscale_status import read_status, wait_for_status
from tests.integration.conftest import SMALL_BATCH_ENGINE, StackKind, Stacks, write_spec
from tests.integration.polling import poll
from tests.integration.stack import LocalStack, free_port

APP = "autoscale"
pytestmark = [pytest.mark.integration, pytest.mark.stacks(APP)]

SCALE_TIMEOUT_S = 400
TARGET_QUEUE = 2
DOWNSCALE_DELAY_S = 40
# Each replica must finish this many requests while both serve.
SERVED_EACH = 3


@dataclass(frozen=True)
class Autoscaled:
    stack: LocalStack
    metrics_url: str


@pytest.fixture(scope="module")
def autoscaled(stacks: Stacks) -> Autoscaled:
    metrics_port = free_port()
    kind = StackKind(
        spec=lambda tmp: write_spec(
            tmp, APP,
            engine=SMALL_BATCH_ENGINE,
            replicas=None,
            # Under the 12 clients, the queue on 2 replicas sharing 2 cores dips to empty for 10-20 s
            # at a time (the clients share the cores too): a 10 s delay scaled down mid-load.
            autoscaling={"minReplicas": 1, "maxReplicas": 2, "targetQueueDepth": TARGET_QUEUE,
                         "upscaleDelaySeconds": 2, "downscaleDelaySeconds": DOWNSCALE_DELAY_S},
            serving={"maxOngoingRequests": 16, "maxQueuedRequests": 64, "requestTimeoutSeconds": 120},
        ),
        # Per-replica counts on the metrics endpoint within a second, not ten.
        env={"RAY_metrics_report_interval_ms": "1000"},
        args=("--metrics-port", str(metrics_port)),
    )
    return Autoscaled(stacks.get(APP, kind), f"http://127.0.0.1:{metrics_port}/metrics")


class Load:
    """Closed-loop streaming clients in a background thread until stopped."""

    def __init__(self, base_url: str, clients: int):
        self.base_url, self.clients = base_url, clients
        self.ok, self.failed = 0, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    async def _run(self):
        client = openai.AsyncOpenAI(base_url=f"{self.base_url}/v1", api_key="unused", max_retries=0, timeout=300)

        async def loop(i: int):
            while not self._stop.is_set():
                try:
                    stream = await client.completions.create(
                        model="tiny", prompt=f"client {i}", max_tokens=48, stream=True,
                        extra_body={"ignore_eos": True})
                    tokens = [c async for c in stream if c.choices and c.choices[0].text is not None]
                    assert tokens, "empty stream"
                    self.ok += 1
                except Exception as err:  # recorded; the test asserts there are none
                    self.failed.append(repr(err))

        await asyncio.gather(*(loop(i) for i in range(self.clients)))

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=300)
        assert not self._thread.is_alive(), "the load did not stop"


def served_by_replica(metrics_url: str) -> Counter:
    """Requests each model replica's engine finished, by Serve replica (vLLM's series carry it)."""
    counts: Counter = Counter()
    for family in text_string_to_metric_families(httpx.get(metrics_url, timeout=10).text):
        for sample in family.samples:
            if sample.name == "ray_vllm_request_success_total" and sample.labels.get("model_name") == "tiny":
                counts[sample.labels["ReplicaId"]] += int(sample.value)
    return counts


def policy_changes(stack: LocalStack) -> list[tuple[str, dict]]:
    """Each change of mind the policy logged in this stack's Serve controller log:
    (reason, inputs), in order."""
    text = "".join(p.read_text(errors="replace")
                   for p in sorted((stack.ray_log_dir() / "serve").glob("controller_*.log")))
    found = re.findall(rf"autoscaling {APP}/llm: (.+?) \(inputs (\{{.*?\}})\)", text)
    return [(reason, ast.literal_eval(inputs)) for reason, inputs in found]


def test_the_queue_scales_to_two_both_serve_and_it_scales_back(autoscaled: Autoscaled):
    assert read_status(APP)["replicas_running"] == 1
    with Load(autoscaled.stack.base_url, clients=12) as load:
        decided_s, _ = wait_for_status(APP, lambda r: r["replicas_desired"] == 2, SCALE_TIMEOUT_S,
                                       "a second replica to be decided")
        serving_s, _ = wait_for_status(APP, lambda r: r["replicas_running"] == 2, SCALE_TIMEOUT_S,
                                       "the second replica to serve")
        # Why it scaled is read below from the policy's own log of its changes, which holds
        # every decision: the status shows only the latest, and while the second replica
        # starts the queue may already be under the target ("steady"), so sampling it races.
        # Both replicas finish requests while both serve (counted from here on).
        before = served_by_replica(autoscaled.metrics_url)

        def both_served() -> Counter | None:
            served = served_by_replica(autoscaled.metrics_url) - before
            return served if len(served) == 2 and min(served.values()) >= SERVED_EACH else None

        served = poll(both_served, 120, f"both replicas to finish {SERVED_EACH} requests", interval_s=1.0)
    print(f"\nsecond replica decided {decided_s:.0f}s and serving {serving_s + decided_s:.0f}s after the load "
          f"began; then served by replica: {dict(served)}")
    wait_for_status(APP, lambda r: r["replicas_running"] == 1 and r["replicas_desired"] == 1,
                    120 + DOWNSCALE_DELAY_S, "scale down to one")
    # The policy's own log of its changes: up because of the queue, then down once it emptied.
    changes = [(reason, inputs) for reason, inputs in policy_changes(autoscaled.stack)
               if reason.startswith(("scale up", "scale down"))]
    assert [reason.split(":")[0] for reason, _ in changes] == ["scale up 1->2", "scale down 2->1"], changes
    (up, up_inputs), (down, down_inputs) = changes
    assert up_inputs["waiting"] / up_inputs["running_replicas"] > TARGET_QUEUE, (up, up_inputs)
    assert down.startswith("scale down 2->1: queue empty") and down_inputs["waiting"] == 0, (down, down_inputs)
    assert load.failed == [], load.failed[:5]
    # Still serving after the scale-down.
    assert httpx.get(f"{autoscaled.stack.base_url}/health", timeout=10).status_code == 200
