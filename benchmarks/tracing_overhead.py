"""What tracing costs: output tokens/s and TTFT at a fixed concurrency with
tracing on (every request sampled, spans exported over OTLP/HTTP to a local
sink that accepts and counts them, as a collector would) and off.

    python benchmarks/tracing_overhead.py [--rounds 3] [--concurrency 16] [--duration 25]

One `shardserve run` at a time, on the same spec and load as
`shardserve bench --compare`; rounds alternate which goes first, and the
ratio on/off is taken within each round (these machines are noisy).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from shardserve.api.validation import load_file
from shardserve.bench.compare import CompareConfig, measure_levels
from shardserve.bench.servers import ServerProcess, build_shardserve_command, free_port, stop_servers_on_sigterm

ROOT = Path(__file__).resolve().parents[1]
OFF, ON = "off", "on"


class OtlpSink:
    """Accepts OTLP/HTTP exports and counts them."""

    def __init__(self) -> None:
        self.requests = 0
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                sink.requests += 1
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spec", type=Path, default=ROOT / "manifests/examples/tiny-cpu.yaml")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--duration", type=float, default=25.0)
    args = parser.parse_args()

    stop_servers_on_sigterm()
    # "off" means off: nothing inherited from this shell switches tracing on.
    for name in [n for n in os.environ if n.startswith("OTEL_")]:
        del os.environ[name]
    md = load_file(str(args.spec))
    config = CompareConfig(spec_file=args.spec, concurrencies=(args.concurrency,), duration_s=args.duration)
    sink = OtlpSink()
    log_dir = Path(tempfile.mkdtemp(prefix="shardserve-tracing-"))
    print(f"tracing overhead: {args.rounds} round(s), concurrency {args.concurrency}, {args.duration:g} s; "
          f"logs in {log_dir}", flush=True)
    ratios, ttft_added = [], []
    for number in range(1, args.rounds + 1):
        measured = {}
        for variant in ((OFF, ON) if number % 2 else (ON, OFF)):
            env = {"OTEL_EXPORTER_OTLP_ENDPOINT": sink.endpoint} if variant == ON else {}
            port = free_port()
            server = ServerProcess(f"tracing-{variant}", build_shardserve_command(args.spec, port), port,
                                   log_dir / f"round{number}-{variant}.log", env=env)
            exports_before = sink.requests
            with server:
                m = asyncio.run(measure_levels(server, md.spec.model.id, config))[args.concurrency]
            measured[variant] = m
            print(f"round {number}: tracing {variant:<3} {m['output_throughput']:7.1f} tok/s  "
                  f"TTFT p50 {m['ttft']['median_ms']:6.1f} ms  ({m['completed']} requests, {m['failed']} failed; "
                  f"{sink.requests - exports_before} span exports)", flush=True)
        ratios.append(measured[ON]["output_throughput"] / measured[OFF]["output_throughput"])
        ttft_added.append(measured[ON]["ttft"]["median_ms"] - measured[OFF]["ttft"]["median_ms"])
    print(f"tracing on / off at concurrency {args.concurrency}, median [min, max] of {args.rounds} round(s): "
          f"output tok/s {statistics.median(ratios):.3f}x [{min(ratios):.3f}, {max(ratios):.3f}]; "
          f"TTFT p50 {statistics.median(ttft_added):+.1f} ms [{min(ttft_added):+.1f}, {max(ttft_added):+.1f}]")


if __name__ == "__main__":
    main()
