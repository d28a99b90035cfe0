"""Liveness and readiness over HTTP: /healthz and /readyz; and the metrics at /metrics.

/healthz answers 200 while the event loop runs and, on the leader, while kopf
runs; a wedged or dead operator fails it and the kubelet restarts the pod.
/readyz answers 200 on a standby waiting for the Lease and on a leader whose
kopf has started watching; 503 while starting up or shutting down.
/metrics is the Prometheus exposition of metrics.py, on every replica (a
standby reports shardserve_operator_leader 0).

One port serves all three: the scrape is as cheap as a probe, runs on the
same event loop, and one named container port is simpler to expose than two.
"""

from __future__ import annotations

import enum
import logging
from typing import Optional

from aiohttp import web

from shardserve_operator.metrics import OperatorMetrics

log = logging.getLogger(__name__)


class Phase(str, enum.Enum):
    STARTING = "starting"
    STANDBY = "standby"  # waiting for the Lease
    LEADING = "leading"  # kopf started
    STOPPING = "stopping"


class Health:
    def __init__(self) -> None:
        self.phase = Phase.STARTING
        self.kopf_ready = False
        self.kopf_failed: Optional[str] = None

    def compute_liveness(self) -> tuple[int, str]:
        if self.kopf_failed:
            return 500, f"kopf stopped: {self.kopf_failed}"
        return 200, self.phase.value

    def compute_readiness(self) -> tuple[int, str]:
        if self.phase == Phase.STANDBY:
            return 200, "standby"
        if self.phase == Phase.LEADING and self.kopf_ready and not self.kopf_failed:
            return 200, "leading"
        return 503, self.phase.value


class HealthServer:
    def __init__(self, health: Health, host: str, port: int, metrics: Optional[OperatorMetrics] = None):
        self.health = health
        self.host = host
        self.port = port
        self.metrics = metrics
        self._runner: Optional[web.AppRunner] = None

    async def _healthz(self, _: web.Request) -> web.Response:
        code, text = self.health.compute_liveness()
        return web.Response(status=code, text=text + "\n")

    async def _readyz(self, _: web.Request) -> web.Response:
        code, text = self.health.compute_readiness()
        return web.Response(status=code, text=text + "\n")

    async def _metrics(self, request: web.Request) -> web.Response:
        assert self.metrics is not None
        body, content_type = self.metrics.render(request.headers.get("Accept"))
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        if self.metrics is not None:
            app.router.add_get("/metrics", self._metrics)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        if self.port == 0:  # an ephemeral port (tests): report the real one
            self.port = self._runner.addresses[0][1]
        paths = "/healthz, /readyz" + (", /metrics" if self.metrics is not None else "")
        log.info("health endpoints on %s:%d (%s)", self.host, self.port, paths)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
