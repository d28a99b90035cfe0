"""What a LoRA adapter costs a request: end-to-end latency, TTFT and output
tokens/s of requests for an adapter against requests for the base model, on
one running `shardserve run` (the tiny model with builtin adapters), at
concurrency 1 and 16; the same ratio on bare vLLM with the same engine
arguments and the adapter as a static --lora-modules entry, to tell
shardserve's share from vLLM's; and how long an adapter's first load takes.

    python benchmarks/lora_overhead.py [--rounds 3] [--duration 15]

Within each round base and adapter run back to back on the same server, in
alternating order, and the ratio adapter/base is taken within the round
(these machines are noisy). The first load is timed from the client, on a
server already warmed with base requests: a 1-token request for an adapter
no replica holds yet, minus the median of the same request once it is
loaded; the server's own measure (shardserve_adapter_load_seconds) is
printed beside it.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import statistics
import tempfile
import time
from pathlib import Path

import httpx
import yaml

from shardserve.api.validation import load_file
from shardserve.bench.compare import CompareConfig, measure_levels
from shardserve.bench.servers import (
    ServerProcess,
    build_shardserve_command,
    build_vllm_command,
    free_port,
    stop_servers_on_sigterm,
)
from shardserve.builtin.tiny import ensure_builtin_model
from shardserve.builtin.tiny_adapters import ensure_builtin_adapter

ROOT = Path(__file__).resolve().parents[1]
BASE, ADAPTER, COLD = "tiny", "tiny-a", "tiny-b"
LORA = {"maxRank": 8, "maxAdapters": 1, "maxCpuAdapters": 2,
        "adapters": [{"name": ADAPTER, "source": "builtin://tiny-a"}, {"name": COLD, "source": "builtin://tiny-b"}]}


def write_spec(directory: Path) -> Path:
    doc = yaml.safe_load((ROOT / "manifests/examples/tiny-cpu.yaml").read_text())
    doc["metadata"]["name"] = "lora-bench"
    doc["spec"]["lora"] = LORA
    path = directory / "lora-bench.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def one_token(client: httpx.Client, model: str) -> float:
    start = time.perf_counter()
    response = client.post("/completions", json={"model": model, "prompt": "The river", "max_tokens": 1})
    response.raise_for_status()
    return time.perf_counter() - start


def first_load(base_url: str, metrics_url: str) -> tuple[float, str]:
    """(seconds the first request for COLD took beyond a warm one, the server's load-time sum for it)."""
    with httpx.Client(base_url=base_url, timeout=300) as client:
        for _ in range(5):  # the server's own first requests are slower: not the adapter's doing
            one_token(client, BASE)
        cold = one_token(client, COLD)
        warm = statistics.median(one_token(client, COLD) for _ in range(9))
    deadline, reported = time.monotonic() + 30, "not exported yet"
    while time.monotonic() < deadline:
        found = re.search(rf'ray_shardserve_adapter_load_seconds_sum\{{[^}}]*adapter="{COLD}"[^}}]*\}} (\S+)',
                          httpx.get(metrics_url, timeout=10).text)
        if found:
            reported = f"{float(found.group(1)) * 1000:.0f} ms"
            break
        time.sleep(1)
    return cold - warm, reported


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=15.0)
    args = parser.parse_args()

    stop_servers_on_sigterm()
    log_dir = Path(tempfile.mkdtemp(prefix="shardserve-lora-"))
    spec = write_spec(log_dir)
    config = CompareConfig(spec_file=spec, concurrencies=(1, 16), duration_s=args.duration)
    port, metrics_port = free_port(), free_port()
    command = [*build_shardserve_command(spec, port), "--metrics-port", str(metrics_port)]
    print(f"LoRA overhead: {args.rounds} round(s), concurrency 1 and 16, {args.duration:g} s each; logs in {log_dir}",
          flush=True)
    with ServerProcess("shardserve", command, port, log_dir / "shardserve.log",
                       env={"RAY_metrics_report_interval_ms": "1000"}) as server:
        added, reported = first_load(server.base_url, f"http://127.0.0.1:{metrics_port}/metrics")
        print(f"first load of {COLD}: +{added * 1000:.0f} ms on its first request (server-side load time {reported})",
              flush=True)
        ours = measure_rounds("shardserve", server, config, args.rounds)
    md = load_file(spec)
    bare_port = free_port()
    bare = [*build_vllm_command(md, str(ensure_builtin_model("tiny")), bare_port),
            "--lora-modules", f"{ADAPTER}={ensure_builtin_adapter(ADAPTER)}"]
    with ServerProcess("vllm", bare, bare_port, log_dir / "vllm.log") as server:
        theirs = measure_rounds("bare vLLM", server, config, args.rounds)
    for name, ratios in (("shardserve", ours), ("bare vLLM", theirs)):
        for c, values in ratios.items():
            spread = "; ".join(f"{metric} {statistics.median(v):.3f}x [{min(v):.3f}, {max(v):.3f}]"
                               for metric, v in values.items())
            print(f"{name}: adapter / base at concurrency {c}, median [min, max] of {args.rounds} round(s): {spread}")


def measure_rounds(name: str, server: ServerProcess, config: CompareConfig, rounds: int) -> dict[int, dict[str, list[float]]]:
    """Adapter / base ratios per concurrency, one per round; base and adapter alternate going first."""
    ratios: dict[int, dict[str, list[float]]] = {c: {"e2el": [], "ttft": [], "tok/s": []} for c in config.concurrencies}
    for number in range(1, rounds + 1):
        measured = {}
        for model in ((BASE, ADAPTER) if number % 2 else (ADAPTER, BASE)):
            measured[model] = asyncio.run(measure_levels(server, model, config))
        for c in config.concurrencies:
            base, lora = measured[BASE][c], measured[ADAPTER][c]
            ratios[c]["e2el"].append(lora["e2el"]["median_ms"] / base["e2el"]["median_ms"])
            ratios[c]["ttft"].append(lora["ttft"]["median_ms"] / base["ttft"]["median_ms"])
            ratios[c]["tok/s"].append(lora["output_throughput"] / base["output_throughput"])
            print(f"{name} round {number} c={c:<2}: e2e p50 base {base['e2el']['median_ms']:7.1f} ms, adapter "
                  f"{lora['e2el']['median_ms']:7.1f} ms; TTFT p50 {base['ttft']['median_ms']:6.1f} / "
                  f"{lora['ttft']['median_ms']:6.1f} ms; tok/s {base['output_throughput']:6.1f} / "
                  f"{lora['output_throughput']:6.1f} ({base['failed'] + lora['failed']} failed)", flush=True)
    return ratios


if __name__ == "__main__":
    main()
