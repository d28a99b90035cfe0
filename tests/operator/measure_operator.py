"""Measures the operator against the API server emulator (not a test; run it directly).

    .venv/bin/python tests/operator/measure_operator.py [COUNT]

Prints the time from a ModelDeployment's creation to its children being
applied (server-side arrival of the RayService and Service POSTs), the time
to its first status write, and the API calls a steady-state reconcile makes.
"""

from __future__ import annotations

import asyncio
import collections
import statistics
import sys
import time
from pathlib import Path

import aiohttp
import kmock

sys.path.insert(0, str(Path(__file__).parent))

from cluster_emulator import ClusterEmulator  # noqa: E402
from operator_harness import RS_PATH, Cluster, eventually, operator_settings, start_operator, tiny_document  # noqa: E402


class TimedEmulator(ClusterEmulator):
    """Notes when each object was created or its status first written."""

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.arrivals: dict[tuple[str, str], float] = {}

    async def _handle(self, request):
        arrived = time.monotonic()
        response = await super()._handle(request)
        if request.method.value in ("POST", "PATCH") and response.status < 300:
            name = request.name or ((request.data or {}).get("metadata") or {}).get("name")
            what = request.resource.plural + ("/status" if request.subresource == "status" else "")
            # The ModelDeployment counts from its arrival, children from their stored write.
            self.arrivals.setdefault((what, name), arrived if what == "modeldeployments" else time.monotonic())
        return response


def ready_status(name: str) -> dict:
    return {"conditions": [{"type": "Ready", "status": "True", "reason": "NonZeroServeEndpoints", "message": "",
                            "lastTransitionTime": "2026-01-01T00:00:00Z"}],
            "numServeEndpoints": 1,
            "activeServiceStatus": {"rayClusterName": f"{name}-abcde",
                                    "applicationStatuses": {name: {"status": "RUNNING"}}}}


async def settled(emulator, quiet: float = 0.5) -> None:
    while True:
        before = len(emulator.requests)
        await asyncio.sleep(quiet)
        if len(emulator.requests) == before:
            return


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def main(count: int) -> None:
    async with TimedEmulator() as emulator, kmock.Server(emulator) as server, aiohttp.ClientSession() as session:
        emulator.declare_resources()
        cluster = Cluster(emulator, str(server.url).rstrip("/"), session)
        operator = await start_operator(operator_settings(cluster.url))
        try:
            children, statuses = [], []
            for i in range(count):
                name = f"m{i}"
                await cluster.create_md(tiny_document(name))
                created = emulator.arrivals[("modeldeployments", name)]
                await eventually(lambda: ("modeldeployments/status", name) in emulator.arrivals, 10)
                children.append(max(emulator.arrivals[("rayservices", name)],
                                    emulator.arrivals[("services", name)]) - created)
                statuses.append(emulator.arrivals[("modeldeployments/status", name)] - created)
                await settled(emulator, 0.2)  # one at a time: latency, not throughput
            await asyncio.sleep(1)
            print(f"create -> children applied, {count} ModelDeployments created one at a time:")
            print(f"  median {statistics.median(children) * 1000:.0f} ms, p95 {percentile(children, 0.95) * 1000:.0f} ms, "
                  f"max {max(children) * 1000:.0f} ms")
            print(f"create -> status written: median {statistics.median(statuses) * 1000:.0f} ms, "
                  f"p95 {percentile(statuses, 0.95) * 1000:.0f} ms")

            mark = len(emulator.requests)
            await asyncio.sleep(5)
            print(f"quiet 5 s with {count} converged ModelDeployments: {len(emulator.calls(mark))} requests, "
                  f"{len(emulator.writes(mark))} writes")

            rs = RS_PATH.format(ns="default") + "/m0/status"
            await cluster.patch(rs, {"status": ready_status("m0")})
            await eventually(lambda: cluster.condition("m0", "Ready")["status"] == "True", 10)
            await settled(emulator)
            mark = len(emulator.requests)
            before = operator.controller.reconciles
            await cluster.patch(rs, {"status": {"lastUpdateTime": "2026-01-01T00:05:00Z"}})  # nothing we report
            await eventually(lambda: operator.controller.reconciles > before, 10)
            await asyncio.sleep(0.5)
            calls = [c for c in emulator.calls(mark) if not c.startswith("PATCH " + RS_PATH.format(ns="default"))]
            print(f"steady-state reconcile after a child's watch event: {len(calls)} calls, "
                  f"{sum(not c.startswith('GET') for c in calls)} writes: {calls}")
        finally:
            await operator.stop()

        mark = len(emulator.requests)
        restarted = await start_operator(operator_settings(cluster.url))
        try:
            await eventually(lambda: restarted.controller.reconciles >= count, 20)
            await settled(emulator)
            gets = [c for c in emulator.calls(mark) if c.startswith("GET") and "/namespaces/" in c]
            kinds = collections.Counter(c.split("/")[-2] for c in gets)
            print(f"restart, resume of {count} converged ModelDeployments: {restarted.controller.reconciles} "
                  f"reconciles, {len(gets)} GETs ({dict(kinds)}), {len(emulator.writes(mark))} writes")
        finally:
            await restarted.stop()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 20))
