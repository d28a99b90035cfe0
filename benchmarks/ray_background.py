"""How much of shardserve's gap to bare vLLM is Ray's own background work.

    python benchmarks/ray_background.py [--concurrency 1] [--duration 15] [--rounds 3] [--shardserve-env NAME=VALUE]

Measures bare vLLM's OpenAI server first, then one `shardserve run` of the
same spec in alternating windows: Ray running as usual, and Ray's other
processes paused (SIGSTOP) while the request path keeps running: the engine
(EngineCore and its worker), the model replica and HAProxy. The paused
processes are Ray's control plane (GCS, raylet, agents), Serve's controller
and proxy, and idle workers.

A diagnostic only: while Ray is paused nothing can start, scale or be
health-checked, and at high concurrency the replica itself slows down (at
16 streams the paused windows were slower, so only concurrency 1 is a clean
reading). Every paused process is resumed before the next window, and
on any error or Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import statistics
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil

from shardserve.api.validation import load_file
from shardserve.bench.client import Endpoint
from shardserve.bench.compare import BARE, SHARDSERVE, CompareConfig, build_server
from shardserve.bench.runner import LoadConfig, open_client, run_load
from shardserve.bench.servers import stop_servers_on_sigterm
from shardserve.bench.stats import Metrics
from shardserve.bench.workload import iter_random_requests

ROOT = Path(__file__).resolve().parents[1]
# What a request passes through on the shardserve side; everything else in the
# server's session is paused.
REQUEST_PATH = ("VLLM::Worker", "EngineCore", "ServeReplica", "haproxy")
PAUSED = "shardserve, Ray paused"


def on_request_path(proc: psutil.Process) -> bool:
    try:
        text = " ".join(proc.cmdline()) + " " + proc.name()
    except psutil.Error:
        return True  # gone or unreadable: leave it alone
    return any(name in text for name in REQUEST_PATH)


@contextmanager
def ray_paused(session: int) -> Iterator[int]:
    """SIGSTOP to every process of the server's session off the request path; SIGCONT on exit."""
    stopped = []
    try:
        for proc in psutil.process_iter():
            try:
                if os.getsid(proc.pid) == session and not on_request_path(proc):
                    os.kill(proc.pid, signal.SIGSTOP)
                    stopped.append(proc.pid)
            except (psutil.Error, ProcessLookupError):
                continue
        yield len(stopped)
    finally:
        for pid in stopped:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass


async def measure(base_url: str, model: str, concurrency: int, duration: float) -> Metrics:
    endpoint = Endpoint(base_url=base_url, model=model, ignore_eos=True)
    requests = iter_random_requests(32, 64, 0.0, random.Random(0))
    async with open_client(concurrency) as client:
        await run_load(client, endpoint, requests, LoadConfig(concurrency=concurrency, num_requests=2 * concurrency),
                       progress=False)
        result = await run_load(client, endpoint, requests,
                                LoadConfig(concurrency=concurrency, num_requests=None, duration_s=duration),
                                progress=False)
    return result.metrics()


def summary_line(name: str, runs: list[Metrics], bare: list[Metrics]) -> str:
    def med(values: Iterator[float]) -> float:
        return statistics.median(list(values))

    tok_s, bare_tok_s = med(m.output_throughput for m in runs), med(m.output_throughput for m in bare)
    return (f"  {name:<22} {tok_s:7.0f} tok/s ({tok_s / bare_tok_s:.3f}x)"
            f"  TPOT p50 {med(m.tpot.median for m in runs):5.2f} ms"
            f"  TTFT p50 {med(m.ttft.median for m in runs):6.1f} ms"
            f"  E2EL p50 {med(m.e2el.median for m in runs):6.1f} ms"
            f"  failed {sum(m.failed for m in runs)}"
            f"  (windows: {', '.join(f'{m.output_throughput:.0f}' for m in runs)} tok/s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spec", type=Path, default=ROOT / "manifests/examples/tiny-cpu.yaml")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1])
    parser.add_argument("--duration", type=float, default=15.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--shardserve-env", action="append", default=[], metavar="NAME=VALUE")
    args = parser.parse_args()
    stop_servers_on_sigterm()

    md = load_file(str(args.spec))
    model = md.spec.model.id
    config = CompareConfig(spec_file=args.spec, shardserve_env=dict(kv.split("=", 1) for kv in args.shardserve_env))
    log_dir = Path(tempfile.mkdtemp(prefix="shardserve-ray-background-"))
    results: dict[tuple[str, int], list[Metrics]] = {}
    with build_server(BARE, md, config, log_dir, 0) as server:
        for c in args.concurrency:
            results[BARE, c] = [asyncio.run(measure(server.base_url, model, c, args.duration))
                                for _ in range(args.rounds)]
    with build_server(SHARDSERVE, md, config, log_dir, 0) as server:
        for c in args.concurrency:
            for r in range(args.rounds):
                # Alternate which window comes first: the machine drifts.
                for paused in ((False, True) if r % 2 == 0 else (True, False)):
                    if paused:
                        with ray_paused(server.process.pid) as count:
                            metrics = asyncio.run(measure(server.base_url, model, c, args.duration))
                        print(f"round {r + 1} c={c}: paused {count} processes", flush=True)
                    else:
                        metrics = asyncio.run(measure(server.base_url, model, c, args.duration))
                    results.setdefault((PAUSED if paused else SHARDSERVE, c), []).append(metrics)
    for c in args.concurrency:
        print(f"concurrency {c} (medians of {args.rounds} windows of {args.duration:.0f} s; ratio to bare vLLM):")
        for name in (BARE, SHARDSERVE, PAUSED):
            print(summary_line(name, results[name, c], results[BARE, c]))
    print(f"logs in {log_dir}")


if __name__ == "__main__":
    main()
