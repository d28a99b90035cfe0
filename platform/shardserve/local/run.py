"""`shardserve run`: a local Ray, the Serve application, progress, clean stop.

The only module that starts and stops a local Ray cluster.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, TextIO

import psutil
import ray

from shardserve.api.contract import KEYS_ENV, KEYS_FILE_ENV, RAY_SERVE_ENV
from shardserve.api.placement import placement_for
from shardserve.api.serve_config import build_application_config
from shardserve.api.serve_options import build_proxy_timeout
from shardserve.api.spec import ModelDeployment
from shardserve.api.tracing_env import build_tracing_env, compute_tracing_settings
from shardserve.api.validation import SpecError, check_servable_here, load_file
from shardserve.local.edits import logical_cpus_needed, plan_edit
from shardserve.serve.http.api_keys import keys_configured

logger = logging.getLogger(__name__)

# Logical CPUs for the local Ray (what it schedules by, not cores): each
# replica's actor and each of its vLLM workers reserve one, while the real
# cores go to vLLM's workers.
MIN_LOGICAL_CPUS = 8
DEPLOY_TIMEOUT_S = 900.0
EDIT_POLL_S = 1.0
# Ray's metrics agent serves every metric (Ray's, Serve's, vLLM's, ours) in
# Prometheus format; KubeRay uses the same port on its pods.
DEFAULT_METRICS_PORT = 8080
# Serve keeps a stopping replica reachable for 30 s, time for whatever routes
# to it to stop; after that it refuses new connections, which HAProxy retries
# on another replica. Locally only HAProxy routes, beside the replicas, so the
# 30 s would only delay each scale-down and every stop.
LOCAL_RAY_SERVE_ENV = {"RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "2"}


class RunError(RuntimeError):
    """The deployment could not start; the message says why."""


@dataclass(frozen=True)
class LocalOptions:
    host: str = "127.0.0.1"
    port: Optional[int] = None  # default: spec.serving.port
    num_cpus: Optional[int] = None
    deploy_timeout_s: float = DEPLOY_TIMEOUT_S
    verbose: bool = False
    metrics_port: Optional[int] = DEFAULT_METRICS_PORT  # 0: any free port
    spec_file: Optional[str] = None  # applies its edits while serving (local.edits)


class _Stop(Exception):
    pass


def _raise_stop(signum: int, _frame: object) -> None:
    raise _Stop(signal.Signals(signum).name)


def _describe_progress(app_status: object) -> str:
    """One line: application state and each deployment's replica counts."""
    parts = [str(getattr(app_status, "status", "?")).split(".")[-1]]
    for name, dep in sorted(getattr(app_status, "deployments", {}).items()):
        counts = getattr(dep, "replica_states", {}) or {}
        running = counts.get("RUNNING", 0)
        total = sum(counts.values())
        parts.append(f"{name} {running}/{total} replicas running")
    return ", ".join(parts)


def _wait_until_running(name: str, timeout_s: float, out: TextIO, started: float) -> None:
    from ray import serve

    last = ""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        app = serve.status().applications.get(name)
        if app is not None:
            state = str(app.status).split(".")[-1]
            line = _describe_progress(app)
            if line != last:
                print(f"  [{time.monotonic() - started:5.1f}s] {line}", file=out, flush=True)
                last = line
            if state == "RUNNING":
                return
            if state in ("DEPLOY_FAILED", "UNHEALTHY"):
                raise RunError(f"deployment failed: {app.message or state}")
        time.sleep(1.0)
    raise RunError(f"deployment not running after {timeout_s:.0f}s")


def _check_accelerators(md: ModelDeployment) -> None:
    needed = placement_for(md.spec).accelerators_per_replica * md.spec.effective_replicas
    if md.spec.resources.accelerator != "cpu":
        have = int(ray.cluster_resources().get("GPU", 0))
        if have < needed:
            raise RunError(
                f"spec.resources.accelerator is {md.spec.resources.accelerator}: this needs {needed} GPU(s), "
                f"the local machine has {have}; use accelerator: cpu to run here"
            )


def run_local(
    md: ModelDeployment,
    options: LocalOptions = LocalOptions(),
    out: TextIO = sys.stdout,
    on_ready: Optional[Callable[[str], None]] = None,
) -> int:
    """Serves `md` until SIGINT/SIGTERM; returns the exit status."""
    # Read when Ray Serve is imported, and by every Ray process: set first.
    for name, value in {**RAY_SERVE_ENV, **LOCAL_RAY_SERVE_ENV}.items():
        os.environ.setdefault(name, value)
    from ray import serve

    from shardserve.serve.ray_private import apply_serve_config, init_ray

    started = time.monotonic()
    port = options.port or md.spec.serving.port
    num_cpus = options.num_cpus or max(MIN_LOGICAL_CPUS, logical_cpus_needed(md))
    name = md.metadata.name
    if md.spec.serving.api_key_secret and not keys_configured():
        print(f"shardserve: error: spec.serving.apiKeySecret is set; locally the keys come from "
              f"{KEYS_ENV} (comma-separated) or {KEYS_FILE_ENV} (a file, one key per line)", file=out, flush=True)
        return 1
    previous = {s: signal.signal(s, _raise_stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        print(f"shardserve: starting a local Ray ({num_cpus} logical CPUs)", file=out, flush=True)
        _apply_tracing_env(md, out)
        init_ray(
            num_cpus=num_cpus,
            include_dashboard=False,
            log_to_driver=options.verbose,
            logging_level=logging.INFO if options.verbose else logging.WARNING,
            metrics_export_port=_metrics_port(options.metrics_port, out),
        )
        # Ray's core worker installs its own SIGTERM handler (dump and die);
        # take it back so SIGTERM stops everything as Ctrl-C does.
        for s in previous:
            signal.signal(s, _raise_stop)
        _check_accelerators(md)
        serve.start(
            http_options={
                "host": options.host,
                "port": port,
                "request_timeout_s": build_proxy_timeout(md),
            },
        )
        print(f"shardserve: deploying {name} (model {md.spec.model.id}, "
              f"tensor {md.spec.parallelism.tensor} x pipeline {md.spec.parallelism.pipeline})",
              file=out, flush=True)
        # The config the operator writes into a RayService, through the same
        # declarative path KubeRay takes: Serve builds the app from its args.
        apply_serve_config(_serve_config(md))
        _wait_until_running(name, options.deploy_timeout_s, out, started)
        endpoint = f"http://{options.host}:{port}/v1"
        print(f"shardserve: ready in {time.monotonic() - started:.1f}s — OpenAI endpoint {endpoint} "
              f"(model {md.spec.model.id!r}); Ctrl-C stops", file=out, flush=True)
        print(f"shardserve: metrics (Prometheus) at http://127.0.0.1:{_read_metrics_port()}/metrics", file=out, flush=True)
        if on_ready:
            on_ready(endpoint)
        # Until a signal raises _Stop.
        if options.spec_file:
            _follow_edits(options.spec_file, md, num_cpus, out)
        else:
            threading.Event().wait()
        return 0
    except _Stop as stop:
        print(f"shardserve: {stop}, stopping", file=out, flush=True)
        return 0
    except RunError as err:
        print(f"shardserve: error: {err}", file=out, flush=True)
        if not options.verbose:
            print("shardserve: Ray's logs are under /tmp/ray/session_latest/logs", file=out, flush=True)
        return 1
    finally:
        # Ignore a second Ctrl-C while stopping, so nothing is left half-stopped.
        for s in previous:
            signal.signal(s, signal.SIG_IGN)
        _shutdown(out)
        for s, handler in previous.items():
            signal.signal(s, handler)


def _serve_config(md: ModelDeployment) -> list[dict[str, Any]]:
    """The operator's Serve config, with a chat template file read in: Serve
    builds the application from the args alone, away from the spec file."""
    chat = md.spec.chat
    if chat is not None and chat.template is not None and chat.template.file is not None:
        # Validation made the path absolute and read it once; read it again, as it is now.
        template = chat.template.model_copy(update={"file": None, "inline": Path(chat.template.file).read_text()})
        md = md.model_copy(update={"spec": md.spec.model_copy(
            update={"chat": chat.model_copy(update={"template": template})})})
    return [build_application_config(md)]


def _follow_edits(path: str, md: ModelDeployment, logical_cpus: int, out: TextIO) -> None:
    """Applies each valid edit of `path` that Serve can apply to the running
    deployment (local.edits); says why for the others, and keeps serving."""
    from shardserve.serve.ray_private import apply_serve_config

    seen = _file_stamp(path)
    while True:
        time.sleep(EDIT_POLL_S)
        stamp = _file_stamp(path)
        if stamp is None or stamp == seen:
            continue  # a missing file is an editor replacing it: wait for the new one
        seen = stamp
        try:
            new = load_file(path)
            problems = check_servable_here(new)
            if problems:
                raise SpecError(problems, path)
        except SpecError as err:
            print(f"shardserve: {err}\nshardserve: still serving the previous spec", file=out, flush=True)
            continue
        edit = plan_edit(md, new, logical_cpus)
        if edit is None:
            continue
        print(f"shardserve: {path}: {edit.message}", file=out, flush=True)
        if edit.apply:
            try:
                apply_serve_config(_serve_config(new))
            except Exception as err:  # noqa: BLE001 - a refused edit must not stop what serves
                print(f"shardserve: Serve did not take the edit ({err}); still serving the previous spec",
                      file=out, flush=True)
                continue
            md = new


def _file_stamp(path: str) -> Optional[tuple[int, int]]:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_mtime_ns, stat.st_size


def _apply_tracing_env(md: ModelDeployment, out: TextIO) -> None:
    """Tracing settings into this process's environment, which every Ray process inherits."""
    settings = compute_tracing_settings(md.spec.telemetry, os.environ)
    os.environ.update(build_tracing_env(settings))
    if settings is not None:
        print(f"shardserve: {settings.describe()}", file=out, flush=True)


def _metrics_port(wanted: Optional[int], out: TextIO) -> Optional[int]:
    """The port for Ray's metrics agent; a busy default gives way to a free port."""
    if not wanted:
        return None
    with socket.socket() as s:
        try:
            s.bind(("0.0.0.0", wanted))
        except OSError:
            if wanted != DEFAULT_METRICS_PORT:
                raise RunError(f"metrics port {wanted} is in use; pick another with --metrics-port") from None
            print(f"shardserve: port {wanted} is in use; metrics go to a free port", file=out, flush=True)
            return None
    return wanted


def _read_metrics_port() -> int:
    for _ in range(50):
        ports = [n.get("MetricsExportPort", 0) for n in ray.nodes() if n.get("Alive")]
        if ports and ports[0]:
            return int(ports[0])
        time.sleep(0.1)
    return 0


def _end_leftovers(processes: list[psutil.Process], grace_s: float = 1.0) -> None:
    """Ends what outlived Ray's shutdown, so that nothing of the run is left:
    an idle Ray worker notices that its raylet is gone about 2.5 s later."""
    alive = [p for p in processes if p.is_running()]
    for process in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.terminate()
    _, alive = psutil.wait_procs(alive, timeout=grace_s)
    for process in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()


def _shutdown(out: TextIO) -> None:
    from ray import serve

    if not ray.is_initialized():
        return
    started = time.monotonic()
    started_here = psutil.Process().children(recursive=True)
    try:
        serve.shutdown()
        serve_s = time.monotonic() - started
    finally:
        # Returns once Ray's own processes (GCS, raylet, dashboard, ...) have exited.
        ray.shutdown(wait_for_processes=True)
        _end_leftovers(started_here)
    print(f"shardserve: stopped (serve {serve_s:.1f}s, total {time.monotonic() - started:.1f}s)", file=out, flush=True)
