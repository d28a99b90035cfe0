"""What tenants' quotas cost a request: TTFT, end-to-end latency and output
tokens/s at concurrency 1 and 16 with spec.tenants (every request asks the
deployment's quota ledger; the tenant's limits are far above the load, so
none is refused) and without it, on the same key, spec and load.

    python benchmarks/tenant_overhead.py [--rounds 3] [--duration 15]

One `shardserve run` at a time; rounds alternate which goes first, and the
ratio on/off is taken within each round (these machines are noisy).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
from pathlib import Path

import yaml

from shardserve.bench.compare import CompareConfig, measure_levels
from shardserve.bench.servers import ServerProcess, build_shardserve_command, free_port, stop_servers_on_sigterm

ROOT = Path(__file__).resolve().parents[1]
KEY = "sk-bench"
TENANTS = {"keys": [{"name": "bench", "requestsPerMinute": 10_000_000, "tokensPerMinute": 10_000_000_000,
                     "maxConcurrentRequests": 100_000}]}


def write_spec(directory: Path, tenants: bool) -> Path:
    doc = yaml.safe_load((ROOT / "manifests/examples/tiny-cpu.yaml").read_text())
    doc["metadata"]["name"] = "tenants-on" if tenants else "tenants-off"
    if tenants:
        doc["spec"]["tenants"] = TENANTS
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
    specs = {on: write_spec(log_dir, on) for on in (False, True)}
    print(f"tenant quotas: {args.rounds} round(s), concurrency 1 and 16, {args.duration:g} s each; logs in {log_dir}",
          flush=True)
    ratios: dict[int, dict[str, list[float]]] = {c: {"ttft": [], "e2el": [], "tok/s": []} for c in (1, 16)}
    for number in range(1, args.rounds + 1):
        measured = {}
        for on in ((False, True) if number % 2 else (True, False)):
            config = CompareConfig(spec_file=specs[on], concurrencies=(1, 16), duration_s=args.duration)
            port = free_port()
            server = ServerProcess(f"tenants-{on}", build_shardserve_command(specs[on], port), port,
                                   log_dir / f"round{number}-{'on' if on else 'off'}.log",
                                   env={"SHARDSERVE_API_KEYS": f"bench={KEY}"})
            with server:
                measured[on] = asyncio.run(measure_levels(server, "tiny", config, api_key=KEY))
        for c in (1, 16):
            off, on_ = measured[False][c], measured[True][c]
            ratios[c]["ttft"].append(on_["ttft"]["median_ms"] / off["ttft"]["median_ms"])
            ratios[c]["e2el"].append(on_["e2el"]["median_ms"] / off["e2el"]["median_ms"])
            ratios[c]["tok/s"].append(on_["output_throughput"] / off["output_throughput"])
            print(f"round {number} c={c:<2}: TTFT p50 off {off['ttft']['median_ms']:6.1f} / on "
                  f"{on_['ttft']['median_ms']:6.1f} ms; e2e p50 {off['e2el']['median_ms']:7.1f} / "
                  f"{on_['e2el']['median_ms']:7.1f} ms; tok/s {off['output_throughput']:6.1f} / "
                  f"{on_['output_throughput']:6.1f} ({off['failed'] + on_['failed']} failed)", flush=True)
    for c, values in ratios.items():
        spread = "; ".join(f"{name} {statistics.median(v):.3f}x [{min(v):.3f}, {max(v):.3f}]" for name, v in values.items())
        print(f"quotas on / off at concurrency {c}, median [min, max] of {args.rounds} round(s): {spread}")


if __name__ == "__main__":
    main()
