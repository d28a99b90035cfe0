"""Tenants' quotas as numbers: buckets, leases, settlement and the headers."""

import pytest

from shardserve.api.tenant_spec import TenantLimits, TenantsSpec
from shardserve.serve.tenants.admission import estimate_tokens, usage_from_json
from shardserve.serve.tenants.ledger import Ledger, format_reset, ratelimit_headers

T0 = 1000.0


def test_requests_a_minute_burst_then_refill_evenly():
    ledger, limits = Ledger(), TenantLimits(requests_per_minute=3)
    assert [ledger.admit("a", limits, 0, f"l{i}", T0 + 60, T0).admitted for i in range(4)] == [True] * 3 + [False]
    refused = ledger.admit("a", limits, 0, "l5", T0 + 60, T0)
    assert refused.reason == "requests" and refused.retry_after_s == pytest.approx(20)
    assert ledger.admit("a", limits, 0, "l6", T0 + 60, T0 + 20).admitted  # one request's worth refilled


def test_tenants_do_not_share_buckets():
    ledger, limits = Ledger(), TenantLimits(requests_per_minute=1)
    assert ledger.admit("a", limits, 0, "1", T0, T0).admitted
    assert not ledger.admit("a", limits, 0, "2", T0, T0).admitted
    assert ledger.admit("b", limits, 0, "3", T0, T0).admitted


def test_tokens_are_estimated_then_settled():
    ledger, limits = Ledger(), TenantLimits(tokens_per_minute=1000)
    first = ledger.admit("a", limits, 600, "1", T0 + 60, T0)
    assert first.admitted and first.remaining_tokens == 400
    refused = ledger.admit("a", limits, 600, "2", T0 + 60, T0)
    assert refused.reason == "tokens" and refused.retry_after_s == pytest.approx(12)
    ledger.finish("a", "1", -500, T0)  # it used 100 of the 600 estimated
    assert ledger.admit("a", limits, 600, "3", T0 + 60, T0).admitted


def test_usage_past_the_estimate_leaves_a_debt():
    ledger, limits = Ledger(), TenantLimits(tokens_per_minute=600)
    assert ledger.admit("a", limits, 100, "1", T0 + 60, T0).admitted
    ledger.finish("a", "1", 900, T0)  # used 1000
    refused = ledger.admit("a", limits, 10, "2", T0 + 60, T0)
    assert refused.reason == "tokens" and refused.remaining_tokens == 0
    assert refused.retry_after_s == pytest.approx((10 + 400) / 10)


def test_a_request_larger_than_the_minute_is_refused_for_good():
    decision = Ledger().admit("a", TenantLimits(tokens_per_minute=100), 101, "1", T0, T0)
    assert decision.reason == "too_large" and "retry-after" not in ratelimit_headers(decision)


def test_concurrency_leases_end_with_the_request_or_their_deadline():
    ledger, limits = Ledger(), TenantLimits(max_concurrent_requests=1)
    assert ledger.admit("a", limits, 0, "1", T0 + 30, T0).admitted
    assert ledger.admit("a", limits, 0, "2", T0 + 30, T0).reason == "concurrency"
    ledger.finish("a", "1", 0, T0 + 1)
    assert ledger.admit("a", limits, 0, "3", T0 + 30, T0 + 1).admitted
    assert ledger.admit("a", limits, 0, "4", T0 + 60, T0 + 31).admitted  # lease 3 lapsed at T0 + 30


def test_a_changed_limit_keeps_what_was_spent():
    ledger = Ledger()
    for i in range(5):
        ledger.admit("a", TenantLimits(requests_per_minute=10), 0, str(i), T0, T0)
    assert ledger.admit("a", TenantLimits(requests_per_minute=6), 0, "x", T0, T0).remaining_requests == 0


def test_headers_are_the_ones_openai_clients_read():
    ledger = Ledger()
    decision = ledger.admit("a", TenantLimits(requests_per_minute=60, tokens_per_minute=6000), 100, "1", T0, T0)
    assert ratelimit_headers(decision) == {
        "x-ratelimit-limit-requests": "60", "x-ratelimit-remaining-requests": "59",
        "x-ratelimit-reset-requests": "1s",
        "x-ratelimit-limit-tokens": "6000", "x-ratelimit-remaining-tokens": "5900",
        "x-ratelimit-reset-tokens": "1s",
    }
    assert ratelimit_headers(ledger.admit("b", TenantLimits(), 0, "2", T0, T0)) == {}
    assert [format_reset(s) for s in (0.02, 1, 6.5, 360)] == ["20ms", "1s", "6.5s", "6m0s"]


def test_limits_by_key_name_and_a_default():
    tenants = TenantsSpec.model_validate({"default": {"requestsPerMinute": 5},
                                          "keys": [{"name": "alice", "priority": "high"}]})
    assert tenants.limits_for("alice").priority == "high" and tenants.limits_for("alice").requests_per_minute is None
    assert tenants.limits_for("bob").requests_per_minute == 5 and tenants.limits_for(None).priority == "normal"
    with pytest.raises(ValueError, match="repeated: a"):
        TenantsSpec.model_validate({"keys": [{"name": "a"}, {"name": "a"}]})


class Body:
    max_tokens, n = 50, 2


def test_estimates_and_usage():
    assert estimate_tokens(b"x" * 400, Body(), None) == 100 + 100
    assert estimate_tokens(b"x" * 40, object(), 64) == 10 + 64
    assert usage_from_json(b'{"usage": {"prompt_tokens": 4, "completion_tokens": 8, "total_tokens": 12}}') == 12
    assert usage_from_json(b"not json") is None


def test_a_request_runs_at_its_tenants_priority_whatever_it_asked():
    from types import SimpleNamespace

    from shardserve.serve.tenants.admission import apply_priority

    body = SimpleNamespace(priority=-100)
    apply_priority(body, TenantLimits(priority="low"))
    assert body.priority == 10
    apply_priority(body, TenantLimits(priority="high"))
    assert body.priority == -10


def test_tenants_switch_vllm_to_priority_scheduling():
    import yaml

    from shardserve.api.validation import SpecError, parse_deployment
    from shardserve.serve.llm_config import build_llm_config
    from tests.test_builder import TINY

    doc = yaml.safe_load(TINY.read_text())
    doc["spec"]["tenants"] = {"keys": [{"name": "a", "priority": "high"}]}
    assert build_llm_config(parse_deployment(doc), builtin_dir="/x")["engine_kwargs"]["scheduling_policy"] == "priority"
    doc["spec"]["engine"]["args"] = {"scheduling_policy": "fcfs"}
    with pytest.raises(SpecError, match="needs vLLM's priority scheduling"):
        parse_deployment(doc)


def test_usage_says_who_is_near_a_limit_and_why():
    ledger = Ledger()
    rpm, tpm, calm = TenantLimits(requests_per_minute=5), TenantLimits(tokens_per_minute=1000), TenantLimits(
        requests_per_minute=100, max_concurrent_requests=2)
    for i in range(7):
        ledger.admit("rpm", rpm, 0, f"r{i}", T0 + 60, T0)  # 5 admitted, 2 refused
    ledger.admit("tpm", tpm, 850, "t", T0 + 60, T0)  # 150 of 1000 left
    ledger.admit("calm", calm, 0, "c", T0 + 60, T0)
    usage = {u.tenant: u for u in ledger.usage(T0 + 1)}
    assert usage["rpm"].near_limit and usage["rpm"].refused == {"requests": 2}
    assert usage["rpm"].requests_left == 0 and usage["rpm"].requests_limit == 5
    assert usage["tpm"].near_limit and usage["tpm"].tokens_left == 166  # 1 s of refill at 1000 a minute
    assert not usage["calm"].near_limit and (usage["calm"].in_flight, usage["calm"].max_in_flight) == (1, 2)
    ledger.admit("calm", calm, 0, "c2", T0 + 60, T0 + 1)
    assert next(u for u in ledger.usage(T0 + 2) if u.tenant == "calm").near_limit  # both slots taken
    # A minute after its last refusal, with its bucket refilled, the first tenant is clear again.
    assert not next(u for u in ledger.usage(T0 + 62) if u.tenant == "rpm").near_limit


def test_status_lists_the_tenants_near_their_limits():
    from shardserve.local.status import build_status_row, format_status

    ledger = Ledger()
    ledger.admit("alice", TenantLimits(requests_per_minute=1, tokens_per_minute=600), 10, "1", T0 + 60, T0)
    ledger.admit("alice", TenantLimits(requests_per_minute=1, tokens_per_minute=600), 10, "2", T0 + 60, T0)
    ledger.admit("bob", TenantLimits(), 10, "3", T0 + 60, T0)
    llm = {"replicas": [{"replica_id": "r1", "state": "RUNNING"}], "target_num_replicas": 1}
    row = build_status_row("t", {"status": "RUNNING"}, llm, None, tenants=ledger.usage(T0))
    assert [t["tenant"] for t in row["tenants"]] == ["alice", "bob"]
    assert format_status([row]).splitlines()[1:] == [
        "  tenants: 2 seen, 1 near their limits",
        "  tenant alice: requests 0/1 left, tokens 590/600 left, refused 1 (requests 1)",
    ]
    assert "tenants" not in format_status([build_status_row("t", {"status": "RUNNING"}, llm, None)])
