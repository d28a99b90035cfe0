"""Benchmark metrics from per-request timings (pure).

The definitions follow vLLM's serving benchmark (`vllm bench serve`), so the
numbers can be set beside it:

- TTFT: request sent -> first streamed chunk carrying a choice;
- ITL: the gaps between consecutive such chunks of one request (a chunk may
  carry more than one token when a server batches them);
- TPOT: per request, (E2EL - TTFT) / (output tokens - 1), over requests with
  more than one output token;
- E2EL: request sent -> last chunk carrying a choice;
- throughput: completed requests and tokens over the benchmark's wall time;
- goodput: completed requests meeting every latency target, per second
  (a request with one output token counts with a TPOT of 0, as in vLLM);
- percentiles: linear interpolation between closest ranks (numpy's default).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

MS = 1000.0
DEFAULT_PERCENTILES = (50.0, 90.0, 99.0)
GOODPUT_METRICS = ("ttft", "tpot", "e2el")


@dataclass
class RequestResult:
    """What one request measured; times are seconds from a monotonic clock."""

    success: bool = False
    start_time: float = 0.0
    ttft: float = 0.0
    itl: list[float] = field(default_factory=list)
    latency: float = 0.0  # E2EL
    output_tokens: int = 0
    prompt_tokens: int = 0
    # Counted from the server's usage (stream_options.include_usage), else
    # the number of chunks with a choice (a lower bound when chunks bundle tokens).
    tokens_from_usage: bool = False
    error: str = ""  # short, groupable reason when not successful, e.g. "HTTP 429"
    detail: str = ""  # the server's message or the exception, for the first examples


def percentile(values: Sequence[float], p: float) -> float:
    """The p-th percentile (0-100) by linear interpolation; 0.0 for no values."""
    if not values:
        return 0.0
    if not 0.0 <= p <= 100.0:
        raise ValueError(f"percentile must be within 0-100, got {p}")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * p / 100.0
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass(frozen=True)
class Distribution:
    """Summary of one latency metric, in milliseconds."""

    mean: float
    std: float
    median: float
    percentiles: dict[float, float]
    count: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "mean_ms": self.mean, "std_ms": self.std, "median_ms": self.median, "count": self.count,
            **{f"p{_label(p)}_ms": v for p, v in self.percentiles.items()},
        }


def _label(p: float) -> str:
    return f"{p:g}".replace(".", "_")


def compute_distribution(seconds: Sequence[float], percentiles: Sequence[float] = DEFAULT_PERCENTILES) -> Distribution:
    """Mean, population std (numpy's), median and percentiles, converted to ms."""
    values = [s * MS for s in seconds]
    n = len(values)
    mean = sum(values) / n if n else 0.0
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / n) if n else 0.0
    return Distribution(
        mean=mean, std=std, median=percentile(values, 50.0),
        percentiles={p: percentile(values, p) for p in percentiles}, count=n,
    )


def parse_goodput(items: Sequence[str]) -> dict[str, float]:
    """['ttft:200', 'tpot:50'] -> {'ttft': 200.0, 'tpot': 50.0} (milliseconds)."""
    targets: dict[str, float] = {}
    for item in items:
        name, sep, value = item.partition(":")
        name = name.strip().lower()
        if not sep or name not in GOODPUT_METRICS:
            raise ValueError(f"goodput target {item!r}: expected NAME:MS with NAME one of {', '.join(GOODPUT_METRICS)}")
        try:
            ms = float(value)
        except ValueError:
            raise ValueError(f"goodput target {item!r}: {value!r} is not a number of milliseconds") from None
        if not ms > 0:
            raise ValueError(f"goodput target {item!r}: must be positive")
        targets[name] = ms
    return targets


def request_tpot(result: RequestResult) -> float:
    """Seconds per output token after the first; 0.0 with one token or fewer."""
    if result.output_tokens <= 1:
        return 0.0
    return (result.latency - result.ttft) / (result.output_tokens - 1)


def meets_targets(result: RequestResult, targets_ms: dict[str, float]) -> bool:
    measured = {"ttft": result.ttft, "tpot": request_tpot(result), "e2el": result.latency}
    return all(measured[name] * MS <= limit for name, limit in targets_ms.items())


@dataclass(frozen=True)
class Metrics:
    duration_s: float
    completed: int
    failed: int
    errors: dict[str, int]
    total_input_tokens: int
    total_output_tokens: int
    request_throughput: float
    output_throughput: float
    total_token_throughput: float
    request_goodput: Optional[float]
    good_requests: Optional[int]
    ttft: Distribution
    tpot: Distribution
    itl: Distribution
    e2el: Distribution
    tokens_from_usage: bool

    def as_dict(self) -> dict[str, Any]:
        return {
            "duration_s": self.duration_s,
            "completed": self.completed,
            "failed": self.failed,
            "errors": dict(self.errors),
            "total_input_tokens": self.total_input_tokens,
            "total_output_tokens": self.total_output_tokens,
            "request_throughput": self.request_throughput,
            "output_throughput": self.output_throughput,
            "total_token_throughput": self.total_token_throughput,
            "request_goodput": self.request_goodput,
            "good_requests": self.good_requests,
            "output_tokens_counted_by": "usage" if self.tokens_from_usage else "chunks",
            "ttft": self.ttft.as_dict(),
            "tpot": self.tpot.as_dict(),
            "itl": self.itl.as_dict(),
            "e2el": self.e2el.as_dict(),
        }


def compute_metrics(
    results: Sequence[RequestResult],
    duration_s: float,
    percentiles: Sequence[float] = DEFAULT_PERCENTILES,
    goodput_ms: Optional[dict[str, float]] = None,
) -> Metrics:
    """Aggregates a run: `duration_s` is its wall time, first send to last completion."""
    if duration_s <= 0:
        raise ValueError("duration must be positive")
    done = [r for r in results if r.success]
    failed = [r for r in results if not r.success]
    output = sum(r.output_tokens for r in done)
    prompt = sum(r.prompt_tokens for r in done)
    good = sum(1 for r in done if meets_targets(r, goodput_ms)) if goodput_ms else None
    return Metrics(
        duration_s=duration_s,
        completed=len(done),
        failed=len(failed),
        errors=dict(Counter(r.error or "unknown" for r in failed).most_common()),
        total_input_tokens=prompt,
        total_output_tokens=output,
        request_throughput=len(done) / duration_s,
        output_throughput=output / duration_s,
        total_token_throughput=(prompt + output) / duration_s,
        request_goodput=good / duration_s if good is not None else None,
        good_requests=good,
        ttft=compute_distribution([r.ttft for r in done], percentiles),
        tpot=compute_distribution([request_tpot(r) for r in done if r.output_tokens > 1], percentiles),
        itl=compute_distribution([gap for r in done for gap in r.itl], percentiles),
        e2el=compute_distribution([r.latency for r in done], percentiles),
        tokens_from_usage=bool(done) and all(r.tokens_from_usage for r in done),
    )
