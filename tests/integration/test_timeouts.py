"""The request timeout and client disconnects on the real stack.

Past `serving.requestTimeoutSeconds` the client gets an OpenAI-shaped 504 (in
a stream: an error event, then [DONE]); a client that goes away mid-stream
frees its slot. Either way the engine itself stops generating: vLLM logs
"Request <id> aborted." for the request (engine arg enable_log_requests), and
its running-request count goes back to zero well before the generation could
have finished.
"""

import json
import re
import time
import uuid

import httpx
import pytest

from tests.integration.conftest import StackKind, Stacks, write_spec

APP = "timeouts"
pytestmark = [pytest.mark.integration, pytest.mark.stacks(APP)]

TIMEOUT_S = 3
# Long enough to run for many seconds on two cores (ignore_eos: no early stop).
LONG_TOKENS = 1800
LONG = {"model": "tiny", "prompt": "go on", "max_tokens": LONG_TOKENS, "ignore_eos": True}


@pytest.fixture(scope="module")
def stack(stacks: Stacks):
    return stacks.get(APP, StackKind(
        spec=lambda tmp: write_spec(
            tmp, APP,
            engine={"maxModelLen": 2048, "dtype": "float32", "kvCacheMemory": "256Mi",
                    "args": {"enable_log_requests": True}},
            serving={"requestTimeoutSeconds": TIMEOUT_S},
        ),
        # --verbose: the replicas' logs (vLLM's included) reach the stack's log.
        args=("--verbose",),
    ))


def request_id(kind: str) -> str:
    return f"{kind}-{uuid.uuid4().hex[:12]}"


def wait_for_abort(stack, rid: str, within_s: float = 15.0) -> str:
    """vLLM's own log line for the aborted request."""
    pattern = re.compile(rf"Request \S*{re.escape(rid)}\S* aborted")
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        found = pattern.search(stack.log())
        if found:
            return found.group(0)
        time.sleep(0.2)
    tail = "\n".join(line for line in stack.log().splitlines() if rid in line)
    raise AssertionError(f"the engine never aborted {rid}; its log lines:\n{tail}")


def finished_normally(stack, rid: str) -> bool:
    return re.search(rf"Finished request \S*{re.escape(rid)}", stack.log()) is not None


def test_a_request_past_the_timeout_gets_an_openai_504_and_the_engine_aborts_it(stack):
    rid = request_id("timeout")
    started = time.monotonic()
    response = httpx.post(f"{stack.base_url}/v1/completions", json=LONG, headers={"X-Request-Id": rid}, timeout=60)
    elapsed = time.monotonic() - started
    assert response.status_code == 504, response.text
    error = response.json()["error"]
    assert error["type"] == "timeout_error" and error["code"] == "request_timeout"
    assert f"{TIMEOUT_S}s" in error["message"]
    assert TIMEOUT_S <= elapsed < TIMEOUT_S + 2, f"answered after {elapsed:.1f}s"
    print(f"\n504 after {elapsed:.2f}s; engine: {wait_for_abort(stack, rid)}")
    assert not finished_normally(stack, rid)


def test_a_stream_past_the_timeout_ends_with_an_error_event_and_the_engine_aborts_it(stack):
    rid = request_id("timeout-stream")
    events = []
    started = time.monotonic()
    with httpx.stream("POST", f"{stack.base_url}/v1/completions", json={**LONG, "stream": True},
                      headers={"X-Request-Id": rid}, timeout=60) as response:
        assert response.status_code == 200
        # Split at "\n" only: iter_lines() also splits at U+2028 and U+0085, which generated text may hold.
        for line in "".join(response.iter_text()).split("\n"):
            if line.startswith("data: "):
                events.append(line.removeprefix("data: "))
    elapsed = time.monotonic() - started
    assert events[-1] == "[DONE]"
    error = json.loads(events[-2])["error"]
    assert error["code"] == "request_timeout" and error["type"] == "timeout_error"
    text = "".join(json.loads(e)["choices"][0]["text"] for e in events[:-2])
    assert text, "tokens streamed before the timeout"
    assert TIMEOUT_S <= elapsed < TIMEOUT_S + 2, f"ended after {elapsed:.1f}s"
    print(f"\nstream ended after {elapsed:.2f}s with {len(events) - 2} chunks; engine: {wait_for_abort(stack, rid)}")
    assert not finished_normally(stack, rid)


def test_a_client_that_disconnects_mid_stream_cancels_its_generation(stack):
    rid = request_id("disconnect")
    chunks = 0
    with httpx.stream("POST", f"{stack.base_url}/v1/completions", json={**LONG, "stream": True},
                      headers={"X-Request-Id": rid}, timeout=60) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: "):
                chunks += 1
            if chunks == 3:
                break  # leaving the block closes the connection mid-stream
    disconnected = time.monotonic()
    line = wait_for_abort(stack, rid)
    print(f"\naborted {time.monotonic() - disconnected:.2f}s after the disconnect: {line}")
    assert not finished_normally(stack, rid)


def test_the_server_stays_healthy_and_serves_after_timeouts_and_disconnects(stack):
    assert httpx.get(f"{stack.base_url}/health", timeout=10).status_code == 200
    response = httpx.post(f"{stack.base_url}/v1/completions",
                          json={"model": "tiny", "prompt": "after", "max_tokens": 8, "ignore_eos": True}, timeout=30)
    assert response.status_code == 200
    assert response.json()["usage"]["completion_tokens"] == 8
