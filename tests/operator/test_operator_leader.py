"""Only one operator acts at a time: leader election on a Lease, against the API server emulator."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from operator_harness import eventually, kopf_is_done, operator_settings, start_operator, tiny_document
from shardserve_operator.health import Phase
from shardserve_operator.leader import format_microtime
from shardserve_operator.settings import LeaderElection

pytestmark = pytest.mark.asyncio

LEASE_PATH = "/apis/coordination.k8s.io/v1/namespaces/default/leases/shardserve-operator"


def elected(url, identity):
    return operator_settings(url, leader_election=LeaderElection(
        enabled=True, identity=identity, lease_namespace="default",
        lease_duration_seconds=1.0, renew_deadline_seconds=0.6, retry_period_seconds=0.1))


def creations(cluster, plural):
    return [w for w in cluster.emulator.writes() if w.startswith("POST") and w.endswith("/" + plural)]


async def test_one_leader_acts_and_a_standby_takes_over_when_it_stops(cluster):
    first = await start_operator(elected(cluster.url, "first"))
    second = await start_operator(elected(cluster.url, "second"), wait_ready=False)
    try:
        await eventually(lambda: second.operator.health.phase == Phase.STANDBY, 10, "a standby")
        lease = cluster.emulator.get("coordination.k8s.io/v1/leases", "default", "shardserve-operator")
        assert lease["spec"]["holderIdentity"] == "first"
        async with cluster.session.get(f"http://127.0.0.1:{second.operator.health_server.port}/readyz") as response:
            assert (response.status, (await response.text()).strip()) == (200, "standby")
        # Both replicas serve /metrics; only the leader says so.
        for running, leading in ((first, "1.0"), (second, "0.0")):
            async with cluster.session.get(f"http://127.0.0.1:{running.operator.health_server.port}/metrics") as response:
                assert f"\nshardserve_operator_leader {leading}\n" in await response.text()

        await cluster.create_md(tiny_document("one"))
        await eventually(lambda: cluster.service("one"), 10, "children from the leader")
        await eventually(lambda: kopf_is_done(cluster.md("one")), 10, "the leader done with it")
        assert len(creations(cluster, "rayservices")) == 1
        # The standby cannot act: it never started kopf (nor the controller it would act through).
        assert second.controller is None and second.operator.health.phase == Phase.STANDBY

        assert await first.stop() == 0  # releases the Lease on the way out
        await eventually(lambda: second.operator.health.kopf_ready, 10, "the standby to lead")
        lease = cluster.emulator.get("coordination.k8s.io/v1/leases", "default", "shardserve-operator")
        assert lease["spec"]["holderIdentity"] == "second"
        await cluster.create_md(tiny_document("two"))
        await eventually(lambda: cluster.service("two"), 10, "children from the new leader")
        assert len(creations(cluster, "rayservices")) == 2  # "one" was resumed, not recreated
    finally:
        await first.stop()
        await second.stop()


async def test_a_leader_that_cannot_renew_stops_acting(cluster):
    leader = await start_operator(elected(cluster.url, "first"))
    usurper_running = True

    async def usurp():
        # Another holder keeps writing the Lease (as if the leader's renewals were lost).
        while usurper_running:
            status, lease = await cluster.request("GET", LEASE_PATH)
            lease["spec"].update(holderIdentity="intruder", renewTime=format_microtime(datetime.now(UTC)))
            await cluster.request("PUT", LEASE_PATH, lease)
            await asyncio.sleep(0.05)

    usurper = asyncio.create_task(usurp())
    try:
        # It stops acting by stopping: kopf, the controller and the process (here, its thread) end.
        await eventually(lambda: leader.done, 10, "the leader to give up")
        assert leader.exit_code == 1
    finally:
        usurper_running = False
        await usurper
        await leader.stop()
