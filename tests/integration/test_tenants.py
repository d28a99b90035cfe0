"""Tenants on the real local stack: two replicas with one engine slot each,
keys named by tenant (NAME=KEY), quotas kept by one ledger for both
replicas, and priority classes in vLLM's queue."""

from __future__ import annotations

import json
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psutil
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.autoscale_status import read_status
from tests.integration.conftest import StackKind, Stacks, write_spec
from tests.integration.observability_doc import documented_metrics
from tests.integration.stack import LocalStack, free_port

TENANTS = "tenants"
pytestmark = [pytest.mark.integration, pytest.mark.stacks(TENANTS)]

KEYS = {"alice": "sk-alice-1", "bob": "sk-bob-1", "carol": "sk-carol-1", "dave": "sk-dave-1"}
ALICE_RPM, CAROL_TPM = 6, 600
METRICS_WAIT_S = 30.0  # Ray's metrics agent exports every second here


@pytest.fixture(scope="module")
def metrics_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def stack(stacks: Stacks, metrics_port: int) -> LocalStack:
    def spec(tmp: Path) -> Path:
        return write_spec(tmp, TENANTS, replicas=2,
                          engine={"maxModelLen": 256, "dtype": "float32", "kvCacheMemory": "256Mi", "maxNumSeqs": 1},
                          tenants={"keys": [{"name": "alice", "requestsPerMinute": ALICE_RPM},
                                            {"name": "bob", "priority": "high"},
                                            {"name": "carol", "tokensPerMinute": CAROL_TPM},
                                            {"name": "dave", "priority": "low"}]})

    keys = ",".join(f"{name}={key}" for name, key in KEYS.items())
    return stacks.get(TENANTS, StackKind(spec=spec, env={"SHARDSERVE_API_KEYS": keys,
                                                         "RAY_metrics_report_interval_ms": "1000"},
                                         args=("--metrics-port", str(metrics_port))))


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
    # `shardserve status` reads the same ledger: alice is near her limit, bob is not.
    tenants = {t["tenant"]: t for t in read_status(TENANTS)["tenants"]}
    assert tenants["alice"]["near_limit"] and tenants["alice"]["refused"] == {"requests": len(refused)}
    assert not tenants["bob"]["near_limit"] and tenants["bob"]["refused"] == {}


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


def test_the_documented_tenant_metrics_count_each_outcome(stack, metrics_port):
    """After the quota tests: alice was refused, carol admitted twice."""
    documented = documented_metrics("Tenants")
    assert len(documented) == 2, documented
    deadline, seen = time.monotonic() + METRICS_WAIT_S, Counter()
    while time.monotonic() < deadline:
        seen = Counter()  # summed over the replicas
        for family in text_string_to_metric_families(httpx.get(f"http://127.0.0.1:{metrics_port}/metrics",
                                                               timeout=10).text):
            for sample in family.samples:
                if sample.name.startswith("ray_shardserve_tenant_"):
                    seen[sample.name, sample.labels.get("tenant"), sample.labels.get("outcome")] += sample.value
        if seen["ray_shardserve_tenant_requests_total", "carol", "admitted"] >= 2 and \
                seen["ray_shardserve_tenant_tokens_total", "carol", None] > 0:
            break
        time.sleep(1)
    assert seen["ray_shardserve_tenant_requests_total", "alice", "requests"] >= 3, seen
    assert seen["ray_shardserve_tenant_requests_total", "carol", "admitted"] >= 2, seen
    assert seen["ray_shardserve_tenant_tokens_total", "carol", None] > 0, seen
    assert {name for name, _, _ in seen} >= set(documented), seen
    assert not any(key in str(seen) for key in KEYS.values())  # named by the key's name, never the key


def _replica_pids(stack: LocalStack) -> set[int]:
    found = set()
    for proc in stack.session_processes():
        try:
            if f"ServeReplica:{TENANTS}:" in " ".join(proc.cmdline()):
                found.add(proc.pid)
        except psutil.Error:
            continue
    return found


def _wait_for_log(stack: LocalStack, text: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while text not in stack.log():
        assert time.monotonic() < deadline, f"{text!r} not in the log:\n{stack.log()[-3000:]}"
        time.sleep(0.5)


def test_an_edit_of_the_file_changes_limits_on_the_running_replicas(stack):
    """Last in the module: it raises alice's limit. A broken edit is refused
    with the field named; a limits edit reaches both replicas with no restart."""
    replicas = _replica_pids(stack)
    assert len(replicas) == 2
    doc = yaml.safe_load(stack.spec_file.read_text())
    doc["spec"]["tenants"]["keys"][0]["requestsPerMinute"] = 0
    stack.spec_file.write_text(yaml.safe_dump(doc))
    _wait_for_log(stack, "spec.tenants.keys[0].requestsPerMinute")
    assert "still serving the previous spec" in stack.log()
    assert post(stack, "bob").status_code == 200

    doc["spec"]["tenants"]["keys"][0]["requestsPerMinute"] = 100
    stack.spec_file.write_text(yaml.safe_dump(doc))
    _wait_for_log(stack, "applying spec.tenants to the running deployment")
    deadline, limits = time.monotonic() + 30, set()
    while limits != {"100"}:
        assert time.monotonic() < deadline, limits
        # Several requests, so both replicas answer (each picks its own limits up).
        answers = [post(stack, "alice") for _ in range(6)]
        assert all(a.status_code in (200, 429) for a in answers)
        limits = {a.headers.get("x-ratelimit-limit-requests") for a in answers}
        time.sleep(0.5)
    assert _replica_pids(stack) == replicas  # reconfigured, not restarted
