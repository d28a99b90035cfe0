"""Tenants on the real local stack: two replicas with one engine slot each,
keys named by tenant (NAME=KEY), quotas kept by one ledger for both
replicas, and priority classes in vLLM's queue."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import StackKind, Stacks, write_spec
from tests.integration.stack import LocalStack

TENANTS = "tenants"
pytestmark = [pytest.mark.integration, pytest.mark.stacks(TENANTS)]

KEYS = {"alice": "sk-alice-1", "bob": "sk-bob-1", "carol": "sk-carol-1", "dave": "sk-dave-1"}
ALICE_RPM, CAROL_TPM = 6, 600


@pytest.fixture(scope="module")
def stack(stacks: Stacks) -> LocalStack:
    def spec(tmp: Path) -> Path:
        return write_spec(tmp, TENANTS, replicas=2,
                          engine={"maxModelLen": 256, "dtype": "float32", "kvCacheMemory": "256Mi", "maxNumSeqs": 1},
                          tenants={"keys": [{"name": "alice", "requestsPerMinute": ALICE_RPM},
                                            {"name": "bob", "priority": "high"},
                                            {"name": "carol", "tokensPerMinute": CAROL_TPM},
                                            {"name": "dave", "priority": "low"}]})

    keys = ",".join(f"{name}={key}" for name, key in KEYS.items())
    return stacks.get(TENANTS, StackKind(spec=spec, env={"SHARDSERVE_API_KEYS": keys}))


def post(stack: LocalStack, tenant: str, max_tokens: int = 2, **extra) -> httpx.Response:
    return httpx.post(f"{stack.base_url}/v1/completions", timeout=120,
                      headers={"Authorization": f"Bearer {KEYS[tenant]}"},
                      json={"model": "tiny", "prompt": "The river", "max_tokens": max_tokens, **extra})


def test_a_high_priority_request_overtakes_queued_low_ones_whatever_they_ask(stack):
    """Each replica runs one request at a time: four low requests fill both (one running, one queued each);
    two high ones sent after them finish before the queued low ones."""
    started, finished = time.monotonic(), []

    def run(tenant: str, max_tokens: int, delay: float) -> None:
        time.sleep(delay)
        # dave asks for the highest priority vLLM has; its tenant's class (low) replaces it.
        answer = post(stack, tenant, max_tokens=max_tokens, ignore_eos=True, priority=-100)
        assert answer.status_code == 200, answer.text
        finished.append((time.monotonic() - started, tenant))

    with ThreadPoolExecutor(6) as pool:
        jobs = [pool.submit(run, "dave", 120, 0.0) for _ in range(4)]
        jobs += [pool.submit(run, "bob", 4, 0.5) for _ in range(2)]
        for job in jobs:
            job.result()
    order = [tenant for _, tenant in sorted(finished)]
    assert order[-2:] == ["dave", "dave"] and "bob" not in order[-2:], sorted(finished)


def test_a_tenant_past_its_requests_gets_429s_with_openai_headers_and_others_do_not(stack):
    answers = [post(stack, "alice") for _ in range(ALICE_RPM + 4)]
    admitted = [r for r in answers if r.status_code == 200]
    refused = [r for r in answers if r.status_code == 429]
    # One ledger for both replicas: the minute's allowance, plus what refilled meanwhile (6 a minute).
    assert ALICE_RPM <= len(admitted) <= ALICE_RPM + 1 and len(admitted) + len(refused) == len(answers), \
        [r.status_code for r in answers]
    first = admitted[0].headers
    assert first["x-ratelimit-limit-requests"] == str(ALICE_RPM)
    assert first["x-ratelimit-remaining-requests"] == str(ALICE_RPM - 1) and first["x-ratelimit-reset-requests"]
    error = refused[0].json()["error"]
    assert error["code"] == "rate_limit_exceeded" and "6 requests per minute" in error["message"]
    assert int(refused[0].headers["retry-after"]) >= 1 and refused[0].headers["x-ratelimit-remaining-requests"] == "0"
    # Another tenant is unaffected, and a key without a quota carries no ratelimit headers.
    bob = post(stack, "bob")
    assert bob.status_code == 200 and "x-ratelimit-limit-requests" not in bob.headers


def test_token_quotas_settle_against_real_usage(stack):
    body = {"model": "tiny", "prompt": "The river", "max_tokens": 100}
    # As the replica estimates it, from the bytes httpx sends (compact JSON).
    estimate = len(json.dumps(body, separators=(",", ":")).encode()) // 4 + 100
    first = post(stack, "carol", max_tokens=100)
    assert first.status_code == 200, first.text
    assert int(first.headers["x-ratelimit-remaining-tokens"]) == CAROL_TPM - estimate
    used = first.json()["usage"]["total_tokens"]
    second = post(stack, "carol", max_tokens=100)
    remaining = int(second.headers["x-ratelimit-remaining-tokens"])
    # The first request now costs what it used; the bucket refills 10 tokens a second meanwhile.
    assert CAROL_TPM - used - estimate <= remaining <= CAROL_TPM - used - estimate + 60, (used, remaining)
