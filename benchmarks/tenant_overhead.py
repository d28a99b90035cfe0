"""What tenants' quotas cost a request: TTFT, end-to-end latency and output
tokens/s at concurrency 1 and 16, on the same key, spec and load, for three
servers:

  off       no spec.tenants (vLLM's default first-come-first-served queue);
  priority  no spec.tenants, vLLM's priority scheduling on (what tenants switch on);
  on        spec.tenants, one tenant with limits far above the load: every
            request asks the deployment's quota ledger, none is refused.

on / priority is the ledger's cost; priority / off is the scheduler's.

    python benchmarks/tenant_overhead.py [--rounds 3] [--duration 15]

One `shardserve run` at a time; each round runs the three in a rotated
order, and ratios are taken within each round (these machines are noisy).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from shardserve.bench.compare import CompareConfig, measure_levels
from shardserve.bench.servers import ServerProcess, build_shardserve_command, free_port, stop_servers_on_sigterm

ROOT = Path(__file__).resolve().parents[1]
KEY = "sk-bench"
TENANTS = {"keys": [{"name": "bench", "requestsPerMinute": 10_000_000, "tokensPerMinute": 10_000_000_000,
                     "maxConcurrentRequests": 100_000}]}
VARIANTS = ("off", "priority", "on")
RATIOS = (("on", "priority"), ("priority", "off"), ("on", "off"))
METRICS: dict[str, Callable[[dict[str, Any]], float]] = {
    "ttft": lambda m: m["ttft"]["median_ms"], "e2el": lambda m: m["e2el"]["median_ms"],
    "tok/s": lambda m: m["output_throughput"],
}


def write_spec(directory: Path, variant: str) -> Path:
    doc = yaml.safe_load((ROOT / "manifests/examples/tiny-cpu.yaml").read_text())
    doc["metadata"]["name"] = f"tenants-{variant}"
    if variant == "on":
        doc["spec"]["tenants"] = TENANTS
    elif variant == "priority":
        doc["spec"]["engine"]["args"] = {"scheduling_policy": "priority"}
    path = directory / f"{doc['metadata']['name']}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=15.0)
    args = parser.parse_args()

    stop_servers_on_sigterm()
    log_dir = Path(tempfile.mkdtemp(prefix="shardserve-tenants-"))
    specs = {variant: write_spec(log_dir, variant) for variant in VARIANTS}
    print(f"tenant quotas: {args.rounds} round(s) of {', '.join(VARIANTS)}, concurrency 1 and 16, "
          f"{args.duration:g} s each; logs in {log_dir}", flush=True)
    ratios: dict[tuple[str, str, int, str], list[float]] = {}
    for number in range(1, args.rounds + 1):
        shift = (number - 1) % len(VARIANTS)
        measured = {}
        for variant in VARIANTS[shift:] + VARIANTS[:shift]:
            config = CompareConfig(spec_file=specs[variant], concurrencies=(1, 16), duration_s=args.duration)
            port = free_port()
            server = ServerProcess(f"tenants-{variant}", build_shardserve_command(specs[variant], port), port,
                                   log_dir / f"round{number}-{variant}.log",
                                   env={"SHARDSERVE_API_KEYS": f"bench={KEY}"})
            with server:
                measured[variant] = asyncio.run(measure_levels(server, "tiny", config, api_key=KEY))
        for c in (1, 16):
            levels = {variant: measured[variant][c] for variant in VARIANTS}
            print(f"round {number} c={c:<2}: " + "; ".join(
                f"{v} TTFT p50 {m['ttft']['median_ms']:6.1f} ms, e2e p50 {m['e2el']['median_ms']:7.1f} ms, "
                f"{m['output_throughput']:6.1f} tok/s ({m['failed']} failed)" for v, m in levels.items()), flush=True)
            for a, b in RATIOS:
                for metric, value in METRICS.items():
                    ratios.setdefault((a, b, c, metric), []).append(value(levels[a]) / value(levels[b]))
    for a, b in RATIOS:
        for c in (1, 16):
            spread = "; ".join(f"{metric} {statistics.median(v):.3f}x [{min(v):.3f}, {max(v):.3f}]"
                               for (a_, b_, c_, metric), v in ratios.items() if (a_, b_, c_) == (a, b, c))
            print(f"{a} / {b} at concurrency {c}, median [min, max] of {args.rounds} round(s): {spread}")


if __name__ == "__main__":
    main()
