"""A run's results as JSON (for machines) and as a table (for people); pure."""

from __future__ import annotations

import math
from typing import Any

from shardserve.bench.client import Endpoint
from shardserve.bench.runner import LoadResult

_EXAMPLES = 3


def build_level_report(load: LoadResult) -> dict[str, Any]:
    """One load level: its settings, its metrics and a few failure examples."""
    config = load.config
    failures = [r for r in load.results if not r.success]
    return {
        "concurrency": config.concurrency,
        "request_rate": None if math.isinf(config.request_rate) else config.request_rate,
        "burstiness": config.burstiness,
        "num_requests": config.num_requests,
        "duration_limit_s": config.duration_s,
        "warmup_requests": config.warmup_requests,
        "goodput_targets_ms": dict(config.goodput_ms),
        "metrics": load.metrics().as_dict(),
        "error_examples": [f"{r.error}: {r.detail}" if r.detail else r.error for r in failures[:_EXAMPLES]],
    }


def build_report(endpoint: Endpoint, loads: list[LoadResult]) -> dict[str, Any]:
    return {
        "endpoint": endpoint.url,
        "model": endpoint.model,
        "api": endpoint.api,
        "levels": [build_level_report(load) for load in loads],
    }


def _row(name: str, dist: dict[str, Any], keys: list[str]) -> str:
    return f"  {name:<6}" + "".join(f"{dist[k]:>10.2f}" for k in keys) + f"{dist['count']:>10d}"


def format_level(level: dict[str, Any]) -> str:
    m = level["metrics"]
    load = f"concurrency {level['concurrency'] or 'unbounded'}"
    if level["request_rate"] is not None:
        load += f", {level['request_rate']:g} req/s (burstiness {level['burstiness']:g})"
    lines = [f"{load}: {m['completed']} completed, {m['failed']} failed in {m['duration_s']:.1f} s"]
    pct_keys = [k for k in m["ttft"] if k.startswith("p") and k.endswith("_ms")]
    keys = ["mean_ms", "median_ms", *pct_keys]
    header = "".join(f"{k.removesuffix('_ms'):>10}" for k in keys)
    lines.append(f"  {'ms':<6}{header}{'n':>10}")
    for name in ("ttft", "tpot", "itl", "e2el"):
        lines.append(_row(name.upper(), m[name], keys))
    counted = "" if m["output_tokens_counted_by"] == "usage" else " (counted as chunks: the server sent no usage)"
    lines.append(
        f"  throughput: {m['request_throughput']:.2f} req/s, output {m['output_throughput']:.1f} tok/s, "
        f"total {m['total_token_throughput']:.1f} tok/s{counted}"
    )
    if m["request_goodput"] is not None:
        targets = ", ".join(f"{k} <= {v:g} ms" for k, v in level["goodput_targets_ms"].items())
        lines.append(f"  goodput: {m['request_goodput']:.2f} req/s ({m['good_requests']} of {m['completed']} met {targets})")
    if m["errors"]:
        lines.append("  errors: " + ", ".join(f"{reason} x{count}" for reason, count in m["errors"].items()))
        lines.extend(f"    e.g. {example}" for example in level["error_examples"])
    return "\n".join(lines)


def format_report(report: dict[str, Any]) -> str:
    head = f"{report['endpoint']} (model {report['model']!r}, {report['api']})"
    return "\n\n".join([head, *(format_level(level) for level in report["levels"])]) + "\n"
