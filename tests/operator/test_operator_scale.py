"""The operator with many ModelDeployments at once: correctness at scale, not timing.

measure_operator.measure_scale() runs the operator as deployed (its own
process, leader election on) against the API server emulator, creates the
ModelDeployments at once, waits for every one to be reconciled, watches a
quiet steady state and a restart. `python tests/operator/measure_operator.py
--count 200` runs the same with more and prints the numbers.
"""

from __future__ import annotations

import pytest

from measure_operator import format_report, measure_scale, writes_of
from shardserve_operator.settings import LeaderElection

COUNT = 50
# The leader renews its Lease every retry period: a steady window of two
# periods sees at least one renewal, so "only the Lease's traffic" is
# observed rather than a window too short to see any request at all.
STEADY_SECONDS = 2 * LeaderElection().retry_period_seconds


@pytest.mark.scale
@pytest.mark.asyncio
async def test_many_model_deployments_each_reconciled_once_then_nothing_is_written():
    report = await measure_scale(COUNT, steady_seconds=STEADY_SECONDS, timeout=120)
    print("\n" + format_report(report))
    assert report.not_reconciled == [] and len(report.latencies) == COUNT
    assert report.exit_codes == [0, 0]

    # One reconcile each (the operator's own writes cause none); each child created once, nothing replaced.
    created = report.created.server
    assert report.created.reconciles == {"modeldeployment": COUNT}
    assert created[("create", "rayservices")] == created[("create", "services")] == COUNT
    assert created[("patch", "modeldeployments/status")] == COUNT
    assert not [(verb, resource) for (verb, resource) in created
                if verb in ("update", "delete") and resource != "leases"]
    # The operator's metrics count what the server saw from it (kopf's own requests aside).
    assert all(created[call] == n for call, n in report.created.operator.items())

    # Nothing changes: no reconcile, no write, no read besides the Lease's renewal.
    steady = report.steady
    assert sum(steady.reconciles.values()) == 0
    assert writes_of(steady.server) == 0
    assert {resource for (_, resource) in steady.server} <= {"leases"}
    assert writes_of(steady.server, lease=True) >= 1, "no Lease renewal seen: the window shows nothing"

    # A new leader resumes every one with reads alone.
    assert report.restart is not None
    assert report.restart.reconciles == {"modeldeployment": COUNT}
    assert writes_of(report.restart.server) == 0
