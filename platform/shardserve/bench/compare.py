"""`shardserve bench --compare FILE`: bare vLLM against `shardserve run` on
the same model, engine arguments and load, one server at a time, in
alternating order for several rounds; reports the ratios and their spread."""

from __future__ import annotations

import asyncio
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, TextIO

from shardserve.api.spec import ModelDeployment
from shardserve.bench.client import Api, Endpoint
from shardserve.bench.runner import LoadConfig, open_client, run_load
from shardserve.bench.servers import (
    ServerProcess,
    build_shardserve_command,
    build_vllm_command,
    build_vllm_env,
    free_port,
)
from shardserve.bench.workload import iter_random_requests
from shardserve.builtin.tiny import ensure_builtin_model

BARE, SHARDSERVE = "vllm", "shardserve"


@dataclass(frozen=True)
class CompareConfig:
    spec_file: Path
    rounds: int = 3
    concurrencies: tuple[int, ...] = (1, 16)
    duration_s: float = 25.0
    input_len: int = 32
    output_len: int = 64
    api: Api = "completions"
    warmup_requests: Optional[int] = None  # before each level; default 2 x concurrency
    seed: int = 0
    shardserve_env: dict[str, str] = field(default_factory=dict)
    log_dir: Optional[Path] = None


def plan_rounds(rounds: int) -> list[tuple[str, str]]:
    """Which server goes first alternates, so slow drifts of the machine cancel out."""
    return [(BARE, SHARDSERVE) if r % 2 == 0 else (SHARDSERVE, BARE) for r in range(rounds)]


def _spread(values: Sequence[float]) -> dict[str, Any]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "values": list(values)}


def compute_comparison(
    rounds: Sequence[dict[str, dict[int, dict[str, Any]]]], concurrencies: Sequence[int],
) -> dict[int, dict[str, Any]]:
    """Per concurrency: shardserve/bare ratios of output tokens/s and TPOT p50,
    and the TTFT p50 shardserve adds, each pairing servers within a round."""
    summary: dict[int, dict[str, Any]] = {}
    for c in concurrencies:
        pairs = [(r[BARE][c], r[SHARDSERVE][c]) for r in rounds]
        summary[c] = {
            "throughput_ratio": _spread([s["output_throughput"] / b["output_throughput"] for b, s in pairs]),
            "ttft_p50_added_ms": _spread([s["ttft"]["median_ms"] - b["ttft"]["median_ms"] for b, s in pairs]),
            "tpot_p50_ratio": _spread([s["tpot"]["median_ms"] / b["tpot"]["median_ms"] for b, s in pairs]),
            BARE: {"output_throughput": statistics.median(b["output_throughput"] for b, _ in pairs),
                   "ttft_p50_ms": statistics.median(b["ttft"]["median_ms"] for b, _ in pairs)},
            SHARDSERVE: {"output_throughput": statistics.median(s["output_throughput"] for _, s in pairs),
                         "ttft_p50_ms": statistics.median(s["ttft"]["median_ms"] for _, s in pairs)},
            "failed": sum(b["failed"] + s["failed"] for b, s in pairs),
        }
    return summary


def format_level_line(server: str, c: int, m: dict[str, Any]) -> str:
    failed = f", {m['failed']} FAILED" if m["failed"] else ""
    return (f"  {server:<10} c={c:<3} {m['output_throughput']:8.1f} tok/s  TTFT p50 {m['ttft']['median_ms']:7.1f} ms"
            f"  TPOT p50 {m['tpot']['median_ms']:6.2f} ms  ITL p50 {m['itl']['median_ms']:6.2f} ms"
            f"  ({m['completed']} requests{failed})")


def format_summary(summary: dict[int, dict[str, Any]], rounds: int) -> str:
    lines = [f"shardserve / bare vLLM, median [min, max] of {rounds} round(s):"]
    for c, s in summary.items():
        t, d, p = s["throughput_ratio"], s["ttft_p50_added_ms"], s["tpot_p50_ratio"]
        lines.append(
            f"  c={c:<3} output tok/s {t['median']:.3f}x [{t['min']:.3f}, {t['max']:.3f}]"
            f"  ({s[SHARDSERVE]['output_throughput']:.0f} vs {s[BARE]['output_throughput']:.0f})"
            f";  TTFT p50 {d['median']:+.1f} ms [{d['min']:+.1f}, {d['max']:+.1f}]"
            f";  TPOT p50 {p['median']:.3f}x"
            + (f";  {s['failed']} requests FAILED" if s["failed"] else "")
        )
    return "\n".join(lines)


async def measure_levels(server: ServerProcess, model: str, config: CompareConfig,
                         api_key: Optional[str] = None) -> dict[int, dict[str, Any]]:
    """Each of the config's concurrencies in turn, on one running server: metrics per level."""
    endpoint = Endpoint(base_url=server.base_url, model=model, api=config.api, ignore_eos=True, api_key=api_key)
    levels: dict[int, dict[str, Any]] = {}
    for c in config.concurrencies:
        load = LoadConfig(concurrency=c, num_requests=None, duration_s=config.duration_s,
                          warmup_requests=2 * c if config.warmup_requests is None else config.warmup_requests,
                          seed=config.seed)
        # The same prompts, in the same order, for both servers.
        requests = iter_random_requests(config.input_len, config.output_len, 0.0, random.Random(config.seed))
        async with open_client(c) as client:
            levels[c] = (await run_load(client, endpoint, requests, load, progress=False)).metrics().as_dict()
    return levels


def _model_path(md: ModelDeployment) -> Optional[str]:
    if md.spec.model.scheme != "builtin":
        return None
    return str(ensure_builtin_model(md.spec.model.location))


def build_server(name: str, md: ModelDeployment, config: CompareConfig, log_dir: Path, round_no: int) -> ServerProcess:
    port = free_port()
    log = log_dir / f"round{round_no}-{name}.log"
    if name == BARE:
        path = _model_path(md)
        return ServerProcess(name, build_vllm_command(md, path, port), port, log, env=build_vllm_env(md, path))
    return ServerProcess(name, build_shardserve_command(config.spec_file, port), port, log, env=dict(config.shardserve_env))


def run_compare(md: ModelDeployment, config: CompareConfig, out: TextIO = sys.stderr) -> dict[str, Any]:
    """Runs every round; returns per-round metrics and the summary."""
    log_dir = config.log_dir or Path(tempfile.mkdtemp(prefix="shardserve-compare-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    print(f"compare: {config.rounds} round(s), concurrency {list(config.concurrencies)}, "
          f"{config.duration_s:g} s per level, {config.output_len}-token outputs; logs in {log_dir}", file=out, flush=True)
    rounds: list[dict[str, Any]] = []
    for number, order in enumerate(plan_rounds(config.rounds), start=1):
        measured: dict[str, Any] = {}
        for name in order:
            server = build_server(name, md, config, log_dir, number)
            started = time.monotonic()
            with server:
                print(f"round {number}: {name} ready in {server.ready_after_s:.0f} s", file=out, flush=True)
                measured[name] = asyncio.run(measure_levels(server, md.spec.model.id, config))
            for c, m in measured[name].items():
                print(format_level_line(name, c, m), file=out, flush=True)
            measured[f"{name}_seconds"] = time.monotonic() - started
        rounds.append(measured)
    summary = compute_comparison(rounds, config.concurrencies)
    return {
        "spec_file": str(config.spec_file),
        "settings": {"rounds": config.rounds, "concurrencies": list(config.concurrencies),
                     "duration_s": config.duration_s, "input_len": config.input_len,
                     "output_len": config.output_len, "api": config.api,
                     "shardserve_env": dict(config.shardserve_env)},
        "rounds": [{k: v for k, v in r.items() if k in (BARE, SHARDSERVE)} for r in rounds],
        "summary": summary,
    }
