"""Helpers for the operator suite: the test's view of the emulated API server, and the operator in a thread."""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import json
import threading
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Optional, Union

import aiohttp
import pytest

from cluster_emulator import ClusterEmulator
from shardserve.api.spec import API_GROUP
from shardserve.api.yaml_loading import safe_load
from shardserve_operator.kinds import MODEL_DEPLOYMENT, WATCHED_KINDS
from shardserve_operator.main import Operator
from shardserve_operator.settings import LeaderElection, OperatorSettings

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "manifests" / "examples" / "tiny-cpu.yaml"
MD_PATH = "/apis/shardserve.dev/v1alpha1/namespaces/{ns}/modeldeployments"
RS_PATH = "/apis/ray.io/v1/namespaces/{ns}/rayservices"
SVC_PATH = "/api/v1/namespaces/{ns}/services"
ING_PATH = "/apis/networking.k8s.io/v1/namespaces/{ns}/ingresses"


def tiny_document(name: str = "tiny", namespace: str = "default", **spec_changes: Any) -> dict[str, Any]:
    doc = safe_load(TINY.read_text())
    doc["metadata"] = {"name": name, "namespace": namespace}
    doc["spec"].update(copy.deepcopy(spec_changes))
    return doc


async def eventually(check: Callable[[], Union[bool, Awaitable[bool]]], timeout: float = 10.0,
                     what: str = "condition") -> float:
    """Polls `check` until true; returns the seconds it took, fails the test after `timeout`."""
    start = time.monotonic()
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.01)


class Cluster:
    """The emulated API server and a plain HTTP client for the test's own requests."""

    def __init__(self, emulator: ClusterEmulator, url: str, session: aiohttp.ClientSession):
        self.emulator = emulator
        self.url = url
        self.session = session

    async def request(self, method: str, path: str, body: Optional[Any] = None,
                      content_type: str = "application/json") -> tuple[int, Any]:
        async with self.session.request(method, self.url + path, json=body,
                                        headers={"Content-Type": content_type}) as response:
            return response.status, await response.json(content_type=None)

    async def create(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        status, data = await self.request("POST", path, body)
        assert status in (200, 201), data
        return data

    async def patch(self, path: str, patch: dict[str, Any]) -> dict[str, Any]:
        status, data = await self.request("PATCH", path, patch, "application/merge-patch+json")
        assert status == 200, data
        return data

    async def create_md(self, doc: dict[str, Any]) -> dict[str, Any]:
        return await self.create(MD_PATH.format(ns=doc["metadata"]["namespace"]), doc)

    def md(self, name: str, ns: str = "default") -> Optional[dict]:
        return self.emulator.get("shardserve.dev/v1alpha1/modeldeployments", ns, name)

    def rayservice(self, name: str, ns: str = "default") -> Optional[dict]:
        return self.emulator.get("ray.io/v1/rayservices", ns, name)

    def service(self, name: str, ns: str = "default") -> Optional[dict]:
        return self.emulator.get("v1/services", ns, name)

    def ingress(self, name: str, ns: str = "default") -> Optional[dict]:
        return self.emulator.get("networking.k8s.io/v1/ingresses", ns, name)

    def events(self, ns: str = "default") -> list[dict]:
        return [obj.raw for (res, namespace, _), obj in self.emulator.objects.items()
                if res.plural == "events" and namespace == ns and not obj.deleted]

    def condition(self, name: str, type_: str, ns: str = "default") -> Optional[dict]:
        md = self.md(name, ns) or {}
        for condition in (md.get("status") or {}).get("conditions", []):
            if condition["type"] == type_:
                return condition
        return None


class ShiftedClock:
    """The wall clock plus an offset the test moves forward, so time passes without waiting."""

    def __init__(self) -> None:
        self.offset = timedelta()

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += timedelta(seconds=seconds)


def kopf_is_done(md: dict[str, Any]) -> bool:
    """kopf handled the ModelDeployment's current spec and holds no retry of it, as its annotations say."""
    annotations = md["metadata"].get("annotations") or {}
    handled = json.loads(annotations.get(f"{API_GROUP}/last-handled-configuration") or "null")
    return f"{API_GROUP}/reconcile" not in annotations and (handled or {}).get("spec") == md["spec"]


def operator_settings(url: str, **changes: Any) -> OperatorSettings:
    base = OperatorSettings(
        api_server=url,
        health_host="127.0.0.1",
        health_port=0,
        retry_base_seconds=0.05,
        retry_max_seconds=0.4,
        conflict_retry_seconds=0.3,
        leader_election=LeaderElection(enabled=False),
    )
    return dataclasses.replace(base, **changes)


def kopf_is_watching(emulator: ClusterEmulator) -> bool:
    """kopf has listed every kind the operator watches: its start-up discovery is over.

    kopf says it is ready before that; stopped during the discovery, it waits
    5 s for the discovery's requests, which wait for credentials it no longer renews.
    """
    listed = {r.url.path.rsplit("/", 1)[-1] for r in emulator.requests if r.method.value == "GET"}
    return {kind.plural for kind in (MODEL_DEPLOYMENT, *WATCHED_KINDS)} <= listed


class RunningOperator:
    """The operator in its own thread and event loop, as in its own process.

    kopf treats the loop it runs in as its own (it cancels tasks it did not
    start when it stops), so it never shares the test's loop.
    """

    def __init__(self, settings: OperatorSettings, clock: Optional[ShiftedClock] = None):
        self.clock = clock or ShiftedClock()
        self.operator = Operator(settings, self.clock)
        self.exit_code: Optional[int] = None
        self.error: Optional[BaseException] = None
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._thread = threading.Thread(target=self._main, name="operator", daemon=True)
        self._thread.start()

    def _main(self) -> None:
        async def run() -> int:
            self._loop = asyncio.get_running_loop()
            return await self.operator.run()

        try:
            self.exit_code = asyncio.run(run())
        except BaseException as err:  # surfaced by stop()
            self.error = err

    @property
    def done(self) -> bool:
        return not self._thread.is_alive()

    @property
    def controller(self):
        return self.operator.controller

    async def stop(self) -> Optional[int]:
        if self._loop is not None and not self.done:
            self._loop.call_soon_threadsafe(self.operator.request_stop)
        await asyncio.to_thread(self._thread.join, 30)
        assert self.done, "the operator did not stop within 30s"
        if self.error is not None:
            raise self.error
        return self.exit_code


async def start_operator(settings: OperatorSettings, wait_ready: bool = True) -> RunningOperator:
    running = RunningOperator(settings)
    if wait_ready:
        await eventually(lambda: running.operator.health.kopf_ready or running.done, 15, "kopf to start")
        if running.done:
            await running.stop()
            pytest.fail("the operator exited during start-up")
    return running
