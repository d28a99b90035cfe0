"""Where the CPU goes: CPU time per generated token, by process, while one
server (bare vLLM or `shardserve run`) serves a fixed load.

    python benchmarks/cpu_by_process.py [--server vllm|shardserve|both] [--concurrency 1 16] [--duration 15]

On a CPU node the engine and the serving path share the same cores, so every
millisecond a proxy or ingress spends per token is taken from the model.
Same spec, engine arguments and load as `shardserve bench --compare`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import psutil

from shardserve.api.validation import load_file
from shardserve.bench.client import Endpoint
from shardserve.bench.compare import BARE, SHARDSERVE, CompareConfig, build_server
from shardserve.bench.runner import LoadConfig, open_client, run_load
from shardserve.bench.servers import stop_servers_on_sigterm
from shardserve.bench.workload import iter_random_requests

ROOT = Path(__file__).resolve().parents[1]
# Process titles, most specific first: Ray names its workers after the actor.
KINDS = ("VLLM::Worker", "EngineCore", "ServeReplica:{app}:llm", "ServeReplica", "haproxy",
         "ProxyActor", "ServeController", "raylet", "gcs_server", "dashboard", "api_server", "runtime_env")


def kind_of(proc: psutil.Process, app: str) -> str:
    try:
        text = " ".join(proc.cmdline()) + " " + proc.name()
    except psutil.Error:
        return "?"
    for kind in KINDS:
        if kind.format(app=app) in text:
            return kind.format(app=app).replace(f":{app}:", " ")
    return "other " + proc.name()[:20]


def cpu_by_kind(session: int, app: str) -> dict[int, tuple[str, float]]:
    out = {}
    for proc in psutil.process_iter():
        try:
            if os.getsid(proc.pid) == session:
                t = proc.cpu_times()
                out[proc.pid] = (kind_of(proc, app), t.user + t.system)
        except (psutil.Error, ProcessLookupError):
            continue
    return out


async def measure(base_url: str, model: str, concurrency: int, duration: float, session: int, app: str):
    endpoint = Endpoint(base_url=base_url, model=model, ignore_eos=True)
    requests = iter_random_requests(32, 64, 0.0, random.Random(0))
    async with open_client(concurrency) as client:
        await run_load(client, endpoint, requests, LoadConfig(concurrency=concurrency, num_requests=2 * concurrency),
                       progress=False)
        before, me_before, started = cpu_by_kind(session, app), time.process_time(), time.monotonic()
        result = await run_load(client, endpoint, requests,
                                LoadConfig(concurrency=concurrency, num_requests=None, duration_s=duration), progress=False)
        after, me_after, wall = cpu_by_kind(session, app), time.process_time(), time.monotonic() - started
    per_kind: dict[str, float] = defaultdict(float)
    for pid, (kind, seconds) in after.items():
        per_kind[kind] += seconds - before.get(pid, (kind, 0.0))[1]
    per_kind["load generator (this process)"] = me_after - me_before
    return result.metrics(), per_kind, wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spec", type=Path, default=ROOT / "manifests/examples/tiny-cpu.yaml")
    parser.add_argument("--server", choices=[BARE, SHARDSERVE, "both"], default="both")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--duration", type=float, default=15.0)
    parser.add_argument("--shardserve-env", action="append", default=[], metavar="NAME=VALUE")
    args = parser.parse_args()
    stop_servers_on_sigterm()

    md = load_file(str(args.spec))
    config = CompareConfig(spec_file=args.spec, shardserve_env=dict(kv.split("=", 1) for kv in args.shardserve_env))
    log_dir = Path(tempfile.mkdtemp(prefix="shardserve-cpu-"))
    for name in ([BARE, SHARDSERVE] if args.server == "both" else [args.server]):
        with build_server(name, md, config, log_dir, 0) as server:
            for c in args.concurrency:
                m, per_kind, wall = asyncio.run(measure(server.base_url, md.spec.model.id, c, args.duration,
                                                        server.process.pid, md.metadata.name))
                tokens = m.total_output_tokens
                total = sum(per_kind.values())
                print(f"{name} c={c}: {m.output_throughput:.0f} tok/s, TTFT p50 {m.ttft.median:.1f} ms; "
                      f"{tokens} tokens, {total:.1f} CPU-s in {wall:.1f} s ({1e3 * total / tokens:.2f} ms CPU/token)")
                for kind, seconds in sorted(per_kind.items(), key=lambda kv: -kv[1]):
                    if seconds >= 0.05:
                        print(f"  {kind:<30} {1e3 * seconds / tokens:6.3f} ms/token  {100 * seconds / wall:4.0f}% of a core")
    print(f"logs in {log_dir}")


if __name__ == "__main__":
    main()
