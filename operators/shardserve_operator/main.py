"""Running the operator: settings -> API client -> Lease -> kopf, with health endpoints.

`shardserve operator` and `python -m shardserve_operator` both land in
`main()`. Only the replica holding the Lease runs kopf (see leader.py); it
watches the namespaces in the settings, or all of them.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, Optional

import kopf

from shardserve.api.spec import API_GROUP
from shardserve_operator import naming
from shardserve_operator.controller import Controller, now_utc
from shardserve_operator.handlers import register
from shardserve_operator.health import Health, HealthServer, Phase
from shardserve_operator.kinds import CHILD_KINDS, WATCHED_KINDS
from shardserve_operator.kube import Kube, build_api_client
from shardserve_operator.leader import LeaseElector
from shardserve_operator.metrics import ManagedState, OperatorMetrics
from shardserve_operator.settings import OperatorSettings, add_arguments, from_args

log = logging.getLogger("shardserve_operator")

# How long kopf may take to finish in-flight handlers at shutdown.
STOP_TIMEOUT_SECONDS = 30.0


def build_kopf_settings(settings: OperatorSettings) -> kopf.OperatorSettings:
    kopf_settings = kopf.OperatorSettings()
    # Events are posted on condition transitions by apply.py, not per handler run.
    kopf_settings.posting.enabled = False
    # kopf's bookkeeping goes to annotations: the CRD's structural status
    # schema would prune a status.kopf field.
    kopf_settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=API_GROUP)
    kopf_settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=API_GROUP, key="last-handled-configuration")
    # kopf's own API requests (watches, its annotation patches) retry on the
    # same schedule as a reconcile; a reconcile's retries are the controller's.
    base, cap = settings.retry_base_seconds, settings.retry_max_seconds
    kopf_settings.networking.error_backoffs = [min(cap, base * 2 ** i) for i in range(8)]
    # Children and RayClusters are filtered by the API server, not after
    # kopf received every Service, Ingress, RayService and RayCluster in the
    # watched namespaces (the handlers' own label filter stays).
    for kind in WATCHED_KINDS:
        kopf_settings.watching.label_selectors[kind.api_version, kind.plural] = \
            f"{naming.LABEL_MANAGED_BY}={naming.MANAGER}"
    return kopf_settings


def _register_login(registry: kopf.OperatorRegistry, settings: OperatorSettings) -> None:
    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> Optional[kopf.ConnectionInfo]:
        if settings.api_server:
            return kopf.ConnectionInfo(server=settings.api_server.rstrip("/"))
        return kopf.login_via_client(**kwargs)  # in-cluster, then kubeconfig


class Operator:
    """One operator process: health server (and /metrics), leader election, kopf."""

    def __init__(self, settings: OperatorSettings, clock: Callable[[], datetime] = now_utc):
        self.settings = settings
        self.clock = clock
        self.health = Health()
        self.metrics = OperatorMetrics(self.read_managed_state, [kind.kind for kind in CHILD_KINDS])
        self.health_server = HealthServer(self.health, settings.health_host, settings.health_port, self.metrics)
        self.controller: Optional[Controller] = None
        self.kube: Optional[Kube] = None
        self._stop = asyncio.Event()

    def request_stop(self) -> None:
        self._stop.set()

    def read_managed_state(self) -> ManagedState:
        """The gauges' view at scrape time (runs on the event loop, as the handlers do)."""
        leading = self.health.phase == Phase.LEADING and self.health.kopf_ready
        if self.controller is None:
            return ManagedState(leading=leading)
        return self.controller.managed_state(leading)

    def _take_signals(self) -> None:
        """SIGINT/SIGTERM -> request_stop, so shutdown always releases the Lease.

        kopf installs its own handlers when it starts (main thread only);
        taking them back lets kopf's stop flag, not a signal, stop kopf.
        """
        if threading.current_thread() is not threading.main_thread():
            return
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(signum, self.request_stop)
            except (NotImplementedError, RuntimeError):
                pass

    async def run(self) -> int:
        """Runs until asked to stop (0) or until leadership or kopf is lost (1)."""
        self._take_signals()
        await self.health_server.start()
        api_client = build_api_client(self.settings.api_server)
        self.kube = Kube(api_client, self.metrics)
        elector: Optional[LeaseElector] = None
        try:
            if self.settings.leader_election.enabled:
                elector = LeaseElector(self.kube, self.settings.leader_election)
                self.health.phase = Phase.STANDBY
                if not await elector.acquire(self._stop):
                    return 0
            self.health.phase = Phase.LEADING
            return await self._lead(elector)
        finally:
            self.health.phase = Phase.STOPPING
            if elector is not None:
                await elector.release()
            await self.health_server.stop()
            await asyncio.to_thread(api_client.close)

    async def _lead(self, elector: Optional[LeaseElector]) -> int:
        assert self.kube is not None
        self.controller = Controller(self.kube, self.settings, self.clock)
        # Before any reconcile: an older KubeRay CRD would drop fields the render needs.
        await asyncio.to_thread(self.controller.check_kuberay)
        await asyncio.to_thread(self.controller.check_own_crd)
        registry = kopf.OperatorRegistry()
        register(registry, self.controller)
        _register_login(registry, self.settings)
        kopf_stop, kopf_ready = asyncio.Event(), asyncio.Event()
        operator = asyncio.create_task(kopf.operator(
            registry=registry,
            settings=build_kopf_settings(self.settings),
            clusterwide=self.settings.clusterwide,
            namespaces=self.settings.namespaces,
            standalone=True,  # exclusivity comes from the Lease, not kopf peering
            stop_flag=kopf_stop,
            ready_flag=kopf_ready,
        ))

        async def mark_ready() -> None:
            await kopf_ready.wait()
            self._take_signals()
            self.health.kopf_ready = True

        stop = asyncio.create_task(self._stop.wait())
        ready = asyncio.create_task(mark_ready())
        hold = asyncio.create_task(elector.hold()) if elector else None
        waits = {stop, operator} | ({hold} if hold else set())
        done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        code = 0
        if hold is not None and hold in done:
            code = 1  # lost the Lease: stop acting now
        if operator in done:
            error = operator.exception()
            if error is not None:
                self.health.kopf_failed = repr(error)
                log.error("kopf stopped: %r", error)
                code = 1
        self.health.phase = Phase.STOPPING
        # Close health connections and pending retries first: kopf waits for
        # every task started after it (their handlers included) before it returns.
        await self.health_server.stop()
        await self.controller.close()
        kopf_stop.set()
        for task in (stop, ready, hold):
            if task is not None:
                task.cancel()
        if operator not in done:
            try:
                await asyncio.wait_for(operator, STOP_TIMEOUT_SECONDS)
            except TimeoutError:
                log.warning("kopf did not stop within %.0fs", STOP_TIMEOUT_SECONDS)
        return code


def resolve_identity(settings: OperatorSettings) -> OperatorSettings:
    """Fills a missing leader identity from the host name (the pod name in a cluster) and pid."""
    lease = settings.leader_election
    if lease.identity:
        return settings
    identity = f"{socket.gethostname()}-{os.getpid()}"
    return dataclasses.replace(settings, leader_election=dataclasses.replace(lease, identity=identity))


def configure_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if level.upper() != "DEBUG":
        # kopf logs every handler call at INFO; our reconcile logs what changed.
        logging.getLogger("kopf").setLevel(logging.WARNING)


def run(settings: OperatorSettings) -> int:
    settings = resolve_identity(settings)
    configure_logging(settings.log_level)

    async def _main() -> int:
        operator = Operator(settings)
        scope = "all namespaces" if settings.clusterwide else ", ".join(settings.namespaces)
        log.info("shardserve operator starting; watching %s", scope)
        return await operator.run()

    return asyncio.run(_main())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="shardserve-operator",
                                     description="Reconciles ModelDeployments into KubeRay RayServices.")
    add_arguments(parser)
    return parser


def run_from_args(args: argparse.Namespace) -> int:
    return run(from_args(args, os.environ))


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run_from_args(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
