"""Measures the operator against the API server emulator (not a test; run it directly).

    .venv/bin/python tests/operator/measure_operator.py [--count 200] [--steady 60] [--one-at-a-time 0]

At scale: creates COUNT ModelDeployments at once (spread over three
namespaces) against the operator as deployed: its own process
(`python -m shardserve_operator`), default settings, leader election on. It
prints
- the seconds from the first create until every one has its RayService and
  Service and a status with a Ready condition and ResourcesApplied=True;
- the API calls that took, by verb and resource, in total and per
  ModelDeployment: the operator's own (its /metrics) and everything the API
  server saw from the process (kopf's lists, watches and patches too); and
  the operator's CPU seconds (its /metrics);
- the calls per minute in the steady state after, with nothing changing;
- a restart: the new leader's resume of COUNT converged ModelDeployments.

--in-thread runs the operator in a thread of this process instead, as the
tests do; it then shares one interpreter lock with the API server emulator
(and its CPU seconds are not reported).

--one-at-a-time M then measures latencies without load, against a fresh API
server and an operator in a thread: M ModelDeployments created one at a
time, creation to children applied (server-side arrival of the RayService
and Service POSTs) and to the first status write; and the calls of a
steady-state reconcile a child's watch event starts. --count 0 skips the rest.

tests/operator/test_operator_scale.py runs measure_scale() with fewer
ModelDeployments and asserts on what it returns.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import copy
import os
import signal
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import aiohttp
import attrs
import kmock
from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, str(Path(__file__).parent))

import shardserve  # noqa: E402
import shardserve_operator  # noqa: E402
from cluster_emulator import ClusterEmulator  # noqa: E402
from operator_harness import RS_PATH, Cluster, eventually, operator_settings, start_operator, tiny_document  # noqa: E402
from shardserve_operator.kube import compute_request_kind  # noqa: E402
from shardserve_operator.settings import LeaderElection  # noqa: E402

NAMESPACES = ("default", "team-a", "team-b")
# Marks the measurement's own requests, so they are not counted as the operator's.
OWN_HEADER = "X-Shardserve-Measure"
WRITES = ("create", "update", "patch", "delete")
MD = "shardserve.dev/v1alpha1/modeldeployments"

Calls = collections.Counter  # (verb, resource) -> count


@attrs.define(kw_only=True)
class ScaleEmulator(ClusterEmulator):
    """Notes when each ModelDeployment arrived, got its children, and was first reconciled."""

    created: dict[tuple[str, str], float] = attrs.field(factory=dict, init=False)
    children: dict[tuple[str, str], float] = attrs.field(factory=dict, init=False)
    first_status: dict[tuple[str, str], float] = attrs.field(factory=dict, init=False)
    reconciled: dict[tuple[str, str], float] = attrs.field(factory=dict, init=False)

    async def _handle(self, request):
        arrived = time.monotonic()
        response = await super()._handle(request)
        if request.resource is None or response.status >= 300 or request.method.value not in ("POST", "PUT", "PATCH"):
            return response
        plural = request.resource.plural
        key = (request.namespace, request.name or ((request.data or {}).get("metadata") or {}).get("name"))
        if plural == "modeldeployments" and request.method.value == "POST":
            self.created.setdefault(key, arrived)
        if plural in ("rayservices", "services") and key not in self.children and \
                self._exists("ray.io/v1/rayservices", *key) and self._exists("v1/services", *key):
            self.children[key] = time.monotonic()
        if plural == "modeldeployments" and request.subresource == "status":
            self.first_status.setdefault(key, time.monotonic())
        if plural == "modeldeployments" and key not in self.reconciled and self.is_reconciled(*key):
            self.reconciled[key] = time.monotonic()
        return response

    def _exists(self, resource: str, namespace: str, name: str) -> bool:
        key = (kmock.resource(resource), namespace, name)
        return key in self._objects and not self._objects[key].deleted

    def is_reconciled(self, namespace: str, name: str) -> bool:
        """Children applied and status written: RayService and Service exist, Ready present, ResourcesApplied True."""
        if not (self._exists("ray.io/v1/rayservices", namespace, name) and self._exists("v1/services", namespace, name)
                and self._exists(MD, namespace, name)):
            return False
        md = self._objects[kmock.resource(MD), namespace, name].raw
        conditions = {c.get("type"): c.get("status") for c in (md.get("status") or {}).get("conditions") or []}
        return "Ready" in conditions and conditions.get("ResourcesApplied") == "True"


def classify(request) -> tuple[str, str]:
    """(verb, resource) of a request the server saw; 'discovery' for the API's self-description."""
    path = request.url.path
    parts = path.strip("/").split("/")
    if parts in (["version"], ["api"], ["apis"]) or (parts[0] == "api" and len(parts) == 2) or \
            (parts[0] == "apis" and len(parts) <= 3):
        return "get", "discovery"
    verb, resource = compute_request_kind(request.method.value, path)
    if verb == "list" and request.params.get("watch") == "true":
        verb = "watch"
    return verb, resource


def server_calls(emulator: ClusterEmulator, since: int) -> Calls:
    """What the server saw from everyone but the measurement itself, by (verb, resource)."""
    return Calls(classify(r) for r in emulator.requests[since:] if OWN_HEADER not in r.headers)


@dataclass
class Scrape:
    """What the operator's /metrics says so far."""

    calls: Calls = field(default_factory=Calls)  # its API requests by (verb, resource)
    reconciles: Calls = field(default_factory=Calls)  # by trigger
    cpu_seconds: float = 0.0  # of its process (with --in-thread: of this one, the API server's work included)


async def scrape(session: aiohttp.ClientSession, port: int) -> Scrape:
    async with session.get(f"http://127.0.0.1:{port}/metrics") as response:
        text = await response.text()
    seen = Scrape()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "shardserve_operator_api_requests_total":
                seen.calls[(sample.labels["verb"], sample.labels["resource"])] += int(sample.value)
            elif sample.name == "shardserve_operator_reconciles_total":
                seen.reconciles[sample.labels["trigger"]] += int(sample.value)
            elif sample.name == "process_cpu_seconds_total":
                seen.cpu_seconds = sample.value
    return seen


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class OperatorProcess:
    """`python -m shardserve_operator` against `url`, importing the same code as this process."""

    def __init__(self, url: str, identity: str):
        self.url, self.identity = url, identity
        self.port = _free_port()
        self.log = tempfile.TemporaryFile()
        self.process: Optional[asyncio.subprocess.Process] = None

    async def start(self, session: aiohttp.ClientSession) -> None:
        roots = [str(Path(module.__file__).resolve().parents[1]) for module in (shardserve, shardserve_operator)]
        env = dict(os.environ, SHARDSERVE_LOG_LEVEL="WARNING", SHARDSERVE_LEADER_IDENTITY=self.identity,
                   PYTHONPATH=os.pathsep.join(roots + [os.environ.get("PYTHONPATH", "")]))
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "shardserve_operator", "--api-server", self.url, "--health-port", str(self.port),
            env=env, stdout=self.log, stderr=asyncio.subprocess.STDOUT)

        async def leading() -> bool:
            if self.process.returncode is not None:
                raise RuntimeError(f"the operator exited with {self.process.returncode}:\n{self.output()}")
            try:
                async with session.get(f"http://127.0.0.1:{self.port}/readyz") as response:
                    return response.status == 200 and (await response.text()).strip() == "leading"
            except aiohttp.ClientError:
                return False
        await eventually(leading, 60, "the operator process to lead")

    async def stop(self) -> int:
        assert self.process is not None
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), 40)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()
        return self.process.returncode

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")


async def start_operator_as(url: str, identity: str, session: aiohttp.ClientSession,
                            in_thread: bool) -> tuple[int, Callable[[], Awaitable[Optional[int]]]]:
    """Starts the operator (leader election on); returns its metrics port and how to stop it."""
    if in_thread:
        running = await start_operator(operator_settings(url, leader_election=LeaderElection(identity=identity)))
        return running.operator.health_server.port, running.stop
    process = OperatorProcess(url, identity)
    await process.start(session)
    return process.port, process.stop


async def settled(emulator: ClusterEmulator, quiet: float = 0.5, timeout: float = 300.0) -> None:
    """Waits until no request has reached the server for `quiet` seconds (Lease renewals aside)."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        before = sum(1 for c in emulator.calls() if "/leases" not in c)
        await asyncio.sleep(quiet)
        if sum(1 for c in emulator.calls() if "/leases" not in c) == before:
            return
    raise TimeoutError(f"the server kept getting requests for {timeout:.0f}s")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def writes_of(calls: Calls, *, lease: bool = False) -> int:
    """Writes in `calls`; the Lease's renewals only when asked."""
    return sum(n for (verb, resource), n in calls.items() if verb in WRITES and (resource == "leases") == lease)


@dataclass
class Phase:
    seconds: float = 0.0
    operator: Calls = field(default_factory=Calls)  # the operator's own requests (its metrics)
    server: Calls = field(default_factory=Calls)  # everything the server saw from the operator's process
    reconciles: Calls = field(default_factory=Calls)  # by trigger
    cpu_seconds: float = 0.0  # the operator process's

    @classmethod
    def between(cls, before: Scrape, after: Scrape, seconds: float, server: Calls) -> Phase:
        return cls(seconds, after.calls - before.calls, server, after.reconciles - before.reconciles,
                   after.cpu_seconds - before.cpu_seconds)


@dataclass
class ScaleReport:
    count: int
    create_seconds: float = 0.0  # sending the creates
    reconciled_seconds: float = 0.0  # first create -> the last one reconciled
    latencies: list[float] = field(default_factory=list)  # each one's create -> reconciled
    created: Phase = field(default_factory=Phase)  # first create -> quiet
    not_reconciled: list[str] = field(default_factory=list)
    steady: Phase = field(default_factory=Phase)
    restart: Optional[Phase] = None  # a new leader, from its start until every one is resumed and it is quiet
    resumed_seconds: float = 0.0  # the new leader's start -> every one resumed
    exit_codes: list[Optional[int]] = field(default_factory=list)
    in_thread: bool = False


async def measure_scale(count: int, steady_seconds: float = 60.0, *, restart: bool = True, in_thread: bool = False,
                        timeout: float = 600.0, namespaces: tuple[str, ...] = NAMESPACES) -> ScaleReport:
    report = ScaleReport(count, in_thread=in_thread)
    base = tiny_document()
    async with ScaleEmulator() as emulator, kmock.Server(emulator) as server, \
            aiohttp.ClientSession(headers={OWN_HEADER: "1"}) as session:
        emulator.declare_resources()
        cluster = Cluster(emulator, str(server.url).rstrip("/"), session)
        port, stop = await start_operator_as(cluster.url, "measure-1", session, in_thread)
        try:
            await settled(emulator)
            mark, before = len(emulator.requests), await scrape(session, port)
            started = time.monotonic()
            names = [(namespaces[i % len(namespaces)], f"m{i}") for i in range(count)]
            for namespace, name in names:
                doc = copy.deepcopy(base)
                doc["metadata"] = {"name": name, "namespace": namespace}
                await cluster.create_md(doc)
            report.create_seconds = time.monotonic() - started
            try:
                await eventually(lambda: len(emulator.reconciled) >= count, timeout, "every ModelDeployment reconciled")
            except BaseException:  # pytest.fail's exception is not an Exception
                report.not_reconciled = [f"{ns}/{n}" for ns, n in names if (ns, n) not in emulator.reconciled]
                raise
            report.reconciled_seconds = max(emulator.reconciled.values()) - started
            report.latencies = [emulator.reconciled[key] - emulator.created[key] for key in names]
            await settled(emulator, 1.0)
            after = await scrape(session, port)
            report.created = Phase.between(before, after, time.monotonic() - started, server_calls(emulator, mark))

            mark, started = len(emulator.requests), time.monotonic()
            await asyncio.sleep(steady_seconds)
            steady = await scrape(session, port)
            report.steady = Phase.between(after, steady, time.monotonic() - started, server_calls(emulator, mark))
        finally:
            report.exit_codes.append(await stop())

        if restart:
            mark, started = len(emulator.requests), time.monotonic()
            port, stop = await start_operator_as(cluster.url, "measure-2", session, in_thread)
            try:
                async def resumed() -> bool:
                    return sum((await scrape(session, port)).reconciles.values()) >= count
                await eventually(resumed, timeout, "every ModelDeployment resumed")
                report.resumed_seconds = time.monotonic() - started
                await settled(emulator, 1.0)
                report.restart = Phase.between(Scrape(), await scrape(session, port), time.monotonic() - started,
                                               server_calls(emulator, mark))
            finally:
                report.exit_codes.append(await stop())
    return report


def format_calls(calls: Calls, count: int) -> list[str]:
    lines = [f"    {verb:<7} {resource:<26} {n:>6}  {n / count:6.2f}" for (verb, resource), n in sorted(calls.items())]
    lines.append(f"    {'all':<34} {sum(calls.values()):>6}  {sum(calls.values()) / count:6.2f}")
    return lines


def format_report(r: ScaleReport) -> str:
    n = r.count

    def cpu(seconds: float, per: str = "") -> str:
        return "n/a (--in-thread)" if r.in_thread else f"{seconds:.1f} s{per}"
    out = [f"{n} ModelDeployments created at once in {len(NAMESPACES)} namespaces ({r.create_seconds:.1f} s to send):",
           f"  all reconciled (children applied, Ready present, ResourcesApplied True) {r.reconciled_seconds:.1f} s "
           f"after the first create",
           f"  each, create -> reconciled: median {statistics.median(r.latencies):.1f} s, "
           f"p95 {percentile(r.latencies, 0.95):.1f} s, max {max(r.latencies):.1f} s",
           f"  until 1 s without requests ({r.created.seconds:.1f} s): reconciles {dict(r.created.reconciles)}, "
           f"operator CPU {cpu(r.created.cpu_seconds, f' ({r.created.cpu_seconds / n * 1000:.0f} ms each)')}",
           "  the operator's API calls (its metrics):   total  per ModelDeployment",
           *format_calls(r.created.operator, n),
           "  every call the server saw from the operator process (kopf's too):",
           *format_calls(r.created.server, n)]
    per_minute = 60.0 / r.steady.seconds
    steady = sum(r.steady.server.values())
    lease = sum(v for (_, resource), v in r.steady.server.items() if resource == "leases")
    out += [f"steady state, {r.steady.seconds:.0f} s with nothing changing: {steady * per_minute:.1f} calls/min "
            f"({lease * per_minute:.1f}/min of them the Lease's renewal), "
            f"{writes_of(r.steady.server) * per_minute:.1f} writes/min besides the Lease; "
            f"reconciles {sum(r.steady.reconciles.values())}; "
            f"operator CPU {cpu(r.steady.cpu_seconds * per_minute, '/min')}",
            *(f"    {verb} {resource}: {v * per_minute:.1f}/min"
              for (verb, resource), v in sorted(r.steady.server.items()))]
    if r.restart is not None:
        out += [f"restart, a new leader resumes {n} converged ModelDeployments: all resumed {r.resumed_seconds:.1f} s "
                f"after its start (process start and leader election included), reconciles "
                f"{dict(r.restart.reconciles)}, writes besides the Lease {writes_of(r.restart.server)}, "
                f"CPU {cpu(r.restart.cpu_seconds, ' (start-up included)')}",
                *format_calls(r.restart.server, n)]
    return "\n".join(out)


def ready_status(name: str) -> dict:
    return {"conditions": [{"type": "Ready", "status": "True", "reason": "NonZeroServeEndpoints", "message": "",
                            "lastTransitionTime": "2026-01-01T00:00:00Z"}],
            "numServeEndpoints": 1,
            "activeServiceStatus": {"rayClusterName": f"{name}-abcde",
                                    "applicationStatuses": {name: {"status": "RUNNING"}}}}


async def measure_one_at_a_time(count: int) -> None:
    async with ScaleEmulator() as emulator, kmock.Server(emulator) as server, aiohttp.ClientSession() as session:
        emulator.declare_resources()
        cluster = Cluster(emulator, str(server.url).rstrip("/"), session)
        operator = await start_operator(operator_settings(cluster.url))
        try:
            children, statuses = [], []
            for i in range(count):
                key = ("default", f"m{i}")
                await cluster.create_md(tiny_document(key[1]))
                # awaited here: the lambda never outlives this iteration
                await eventually(lambda: key in emulator.first_status and key in emulator.children, 10)  # noqa: B023
                children.append(emulator.children[key] - emulator.created[key])
                statuses.append(emulator.first_status[key] - emulator.created[key])
                await settled(emulator, 0.2)  # one at a time: latency, not throughput
            print(f"create -> children applied, {count} ModelDeployments created one at a time:")
            print(f"  median {statistics.median(children) * 1000:.0f} ms, "
                  f"p95 {percentile(children, 0.95) * 1000:.0f} ms, max {max(children) * 1000:.0f} ms")
            print(f"create -> status written: median {statistics.median(statuses) * 1000:.0f} ms, "
                  f"p95 {percentile(statuses, 0.95) * 1000:.0f} ms")

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


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=200, help="ModelDeployments created at once (default 200)")
    parser.add_argument("--steady", type=float, default=60.0, help="seconds of steady state to count (default 60)")
    parser.add_argument("--no-restart", action="store_true", help="skip the restart")
    parser.add_argument("--in-thread", action="store_true",
                        help="run the operator in a thread of this process (as the tests do), not its own process")
    parser.add_argument("--one-at-a-time", type=int, default=0, metavar="M",
                        help="then M ModelDeployments one at a time, for latencies without load")
    args = parser.parse_args(argv)
    if args.count:
        report = asyncio.run(measure_scale(args.count, args.steady, restart=not args.no_restart,
                                           in_thread=args.in_thread))
        print(format_report(report))
    if args.one_at_a_time:
        asyncio.run(measure_one_at_a_time(args.one_at_a_time))


if __name__ == "__main__":
    main()
