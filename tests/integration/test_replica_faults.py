"""A model replica killed under load, on the real stack.

Closed-loop clients (streamed and not) run against one replica; its process is
killed with SIGKILL. The replica serves HTTP itself, so a request in flight on
it ends with its process: each must end promptly, either complete, or with a
clean OpenAI-shaped 5xx (an error event then [DONE] in a stream), or with its
connection closed (or HAProxy's plain 5xx) -- never hang. Requests sent after
the kill must all succeed: HAProxy hands them to Serve's proxy while no
replica is up, and it holds them until Serve's replacement serves. /health is
200 again.
"""

import asyncio
import json
import os
import signal
import time
from dataclasses import dataclass

import httpx
import pytest

from tests.integration.conftest import StackKind, Stacks, write_spec

APP = "faults"
pytestmark = [pytest.mark.integration, pytest.mark.stacks(APP)]

CLIENTS = 4
# No request may take this long: a hang shows up as a client timeout.
CLIENT_TIMEOUT_S = 240.0
RECOVERY_LIMIT_S = 300.0


@pytest.fixture(scope="module")
def stack(stacks: Stacks):
    # Requests sent while no replica runs wait for the replacement, so the
    # timeout must cover a replica's start on a busy machine.
    return stacks.get(APP, StackKind(spec=lambda tmp: write_spec(tmp, APP, serving={"requestTimeoutSeconds": 280})))


@dataclass
class Outcome:
    sent: float
    ended: float
    stream: bool
    status: int
    # "ok"; "error": a clean OpenAI-shaped 5xx or error event; "lost": the connection closed, or
    # HAProxy's plain 5xx, as the process serving it died; "hang": a client timeout; "broken": anything else
    result: str
    detail: str = ""


async def one(client: httpx.AsyncClient, i: int, stream: bool) -> Outcome:
    body = {"model": "tiny", "prompt": f"load {i}", "max_tokens": 48, "ignore_eos": True, "stream": stream}
    if stream:
        body["stream_options"] = {"include_usage": True}
    sent = time.monotonic()
    try:
        if not stream:
            response = await client.post("/v1/completions", json=body)
            if response.status_code == 200:
                ok = response.json()["usage"]["completion_tokens"] == 48
                return Outcome(sent, time.monotonic(), False, 200, "ok" if ok else "broken", response.text[:200])
            return Outcome(sent, time.monotonic(), False, response.status_code, failed(response),
                           response.text[:300])
        events = []
        async with client.stream("POST", "/v1/completions", json=body) as response:
            if response.status_code != 200:
                await response.aread()
                return Outcome(sent, time.monotonic(), True, response.status_code, failed(response),
                               response.text[:300])
            # Split at "\n" only: aiter_lines() also splits at U+2028 and U+0085, which generated text may hold.
            for line in (await response.aread()).decode().split("\n"):
                if line.startswith("data: "):
                    events.append(line.removeprefix("data: "))
        if events[-1:] != ["[DONE]"]:
            return Outcome(sent, time.monotonic(), True, 200, "lost", f"no [DONE]; last {events[-2:]}")
        errors = [e for e in events[:-1] if '"error"' in e and "error" in json.loads(e)]
        usage = [json.loads(e)["usage"] for e in events[:-1] if '"usage"' in e and json.loads(e).get("usage")]
        complete = bool(usage) and usage[-1]["completion_tokens"] == 48
        result = "error" if errors else "ok" if complete else "broken"
        return Outcome(sent, time.monotonic(), True, 200, result, errors[0][:300] if errors else "")
    except httpx.TimeoutException as err:
        return Outcome(sent, time.monotonic(), stream, 0, "hang", repr(err))
    except httpx.HTTPError as err:  # the connection closed under the request
        return Outcome(sent, time.monotonic(), stream, 0, "lost", repr(err))


def failed(response: httpx.Response) -> str:
    """How a non-200 answer failed: "error" when clean, "lost" for HAProxy's own plain-text 5xx."""
    if response.status_code < 500:
        return "broken"
    try:
        return "error" if "error" in response.json() else "broken"
    except ValueError:
        return "lost"


async def load(base_url: str, stop_at: dict, outcomes: list[Outcome], worker: int, busy: set[int]) -> None:
    """One closed-loop client; `busy` holds the workers with a request under way."""
    async with httpx.AsyncClient(base_url=base_url, timeout=CLIENT_TIMEOUT_S) as client:
        i = 0
        while time.monotonic() < stop_at["t"]:
            busy.add(worker)
            outcomes.append(await one(client, worker * 1000 + i, stream=(worker % 2 == 0)))
            busy.discard(worker)
            i += 1


def replica_process(stack):
    for proc in stack.session_processes():
        try:
            if "ServeReplica:faults:llm" in " ".join(proc.cmdline()) or "ServeReplica:faults:llm" in proc.name():
                return proc
        except Exception:
            continue
    raise AssertionError("no llm replica process found")


async def run_scenario(stack) -> tuple[float, list[Outcome], float]:
    outcomes: list[Outcome] = []
    busy: set[int] = set()
    stop_at = {"t": float("inf")}
    workers = [asyncio.create_task(load(stack.base_url, stop_at, outcomes, w, busy)) for w in range(CLIENTS)]
    # Steady load first: every client has had an answer (the first ones after
    # a start can take seconds), and each has a request under way.
    started = time.monotonic()
    while sum(o.result == "ok" for o in outcomes) < CLIENTS or len(busy) < CLIENTS:
        assert time.monotonic() - started < 120, f"no steady load before the kill: {outcomes[:3]}"
        await asyncio.sleep(0.1)
    victim = replica_process(stack)
    print(f"\nkilling {victim.pid} {victim.name()!r} {' '.join(victim.cmdline())[:120]!r}")
    killed_at = time.monotonic()
    os.kill(victim.pid, signal.SIGKILL)
    # Load goes on until requests sent after the kill have succeeded for a while.
    recovered_at = None
    async with httpx.AsyncClient(base_url=stack.base_url, timeout=10) as probe:
        while time.monotonic() - killed_at < RECOVERY_LIMIT_S:
            await asyncio.sleep(1)
            ok_after = [o for o in outcomes if o.sent > killed_at and o.result == "ok"]
            try:
                healthy = (await probe.get("/health")).status_code == 200
            except httpx.HTTPError:
                healthy = False
            if healthy and len(ok_after) >= 2 * CLIENTS:
                recovered_at = min(o.ended for o in ok_after)
                break
    stop_at["t"] = time.monotonic()
    await asyncio.gather(*workers)
    assert recovered_at is not None, f"not recovered {RECOVERY_LIMIT_S:.0f}s after the kill"
    return killed_at, outcomes, recovered_at


def test_a_killed_replica_is_replaced_and_in_flight_requests_end_promptly(stack):
    killed_at, outcomes, recovered_at = asyncio.run(run_scenario(stack))
    before = [o for o in outcomes if o.ended < killed_at]
    in_flight = [o for o in outcomes if o.sent < killed_at <= o.ended]
    after = [o for o in outcomes if o.sent >= killed_at]
    for o in in_flight:
        print(f"in flight: stream={o.stream} sent {o.sent - killed_at:+.2f}s ended {o.ended - killed_at:+.2f}s "
              f"{o.status} {o.result} {o.detail[:160]}")
    bad = [o for o in outcomes if o.result in ("hang", "broken")]
    assert not bad, [(o.stream, o.status, o.result, o.detail) for o in bad]
    assert before and all(o.result == "ok" for o in before)
    assert in_flight, "the kill should catch requests in flight"
    for o in in_flight:
        assert o.ended - killed_at < 30, f"an in-flight request took {o.ended - killed_at:.0f}s to end"
    assert after and all(o.result == "ok" for o in after), [(o.status, o.detail) for o in after if o.result != "ok"]
    counts = {r: sum(o.result == r for o in in_flight) for r in ("ok", "error", "lost")}
    print(f"\nbefore the kill: {len(before)} ok; in flight at the kill: {len(in_flight)} {counts}; "
          f"sent after the kill: {len(after)} ok; first success after the kill at +{recovered_at - killed_at:.1f}s; "
          f"failures: {sorted({(o.stream, o.status, o.detail[:80]) for o in in_flight if o.result != 'ok'})}")
    # The replacement serves, and the deployment is ready again.
    assert httpx.get(f"{stack.base_url}/health", timeout=10).status_code == 200
