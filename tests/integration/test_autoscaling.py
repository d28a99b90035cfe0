"""Queue-depth autoscaling and backpressure on the real local stack.

A burst of streams fills the engine's batch (maxNumSeqs 2), so requests wait
in vLLM's queue; the policy adds a second replica, and once the load stops
it goes back to one. Every request must be answered throughout.
"""

import asyncio
import json
import re
import subprocess
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest

from tests.integration.conftest import SMALL_BATCH_ENGINE, StackKind, Stacks, write_spec
from tests.integration.stack import shardserve_command

pytestmark = [pytest.mark.integration, pytest.mark.stacks("autoscale")]

SCALE_TIMEOUT_S = 400


@pytest.fixture(scope="module")
def autoscaled(stacks: Stacks):
    return stacks.get("autoscale", StackKind(spec=lambda tmp: write_spec(
        tmp, "autoscale",
        engine=SMALL_BATCH_ENGINE,
        replicas=None,
        autoscaling={"minReplicas": 1, "maxReplicas": 2, "targetQueueDepth": 2,
                     "upscaleDelaySeconds": 2, "downscaleDelaySeconds": 10},
        serving={"maxOngoingRequests": 16, "maxQueuedRequests": 64, "requestTimeoutSeconds": 120},
    )))


def read_status() -> dict:
    out = subprocess.run([*shardserve_command(), "status", "autoscale", "--json"],
                         capture_output=True, text=True, timeout=120, check=True)
    [row] = json.loads(out.stdout)
    return row


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


def controller_log() -> str:
    """Serve's controller log of the running stack (the only Ray session running)."""
    logs = Path("/tmp/ray/session_latest/logs/serve").glob("controller_*.log")
    return "".join(p.read_text(errors="replace") for p in logs)


def wait_for(predicate, timeout_s: float, what: str, seen: list | None = None) -> tuple[float, dict]:
    """Polls `shardserve status` until predicate(row); every row read goes to `seen`."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        row = read_status()
        if seen is not None:
            seen.append(row)
        if predicate(row):
            return time.monotonic() - started, row
        time.sleep(2)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}; last status {row}")


def test_burst_scales_to_two_and_back_without_losing_requests(autoscaled):
    assert read_status()["replicas_running"] == 1
    with Load(autoscaled.base_url, clients=12) as load:
        seen: list[dict] = []
        decided_s, row = wait_for(lambda r: r["replicas_desired"] == 2, SCALE_TIMEOUT_S,
                                  "a second replica to be decided", seen)
        # The queue drove it. The decision after a scale-up already reads "steady", and
        # the status may be read only after it: Serve's controller log has every change of mind.
        assert any("scale up 1->2" in r["last_decision"] or (r["queue_waiting"] or 0) > 0 for r in seen) \
            or re.search(r"autoscale/llm: scale up 1->2: queue [0-9.]+/replica > target 2", controller_log()), seen[-3:]
        serving_s, _ = wait_for(lambda r: r["replicas_running"] == 2, SCALE_TIMEOUT_S, "the second replica to serve")
        served_before = load.ok
        time.sleep(10)  # both replicas take traffic for a while
        assert load.ok > served_before
    print(f"\nsecond replica decided {decided_s:.0f}s and serving {serving_s + decided_s:.0f}s after the load began")
    back_s, row = wait_for(lambda r: r["replicas_running"] == 1 and r["replicas_desired"] == 1, 120, "scale down to one")
    assert "scale down 2->1" in row["last_decision"] or row["last_decision"].startswith("steady")
    assert load.failed == [], load.failed[:5]
    assert load.ok >= 12
    # Still serving after the scale-down.
    assert httpx.get(f"{autoscaled.base_url}/health", timeout=10).status_code == 200
