"""`shardserve bench`: a load generator for OpenAI-compatible endpoints, with
metrics defined as in vLLM's serving benchmark, and a side-by-side comparison
of bare vLLM and `shardserve run`."""

from shardserve.bench.client import Endpoint, send_request
from shardserve.bench.runner import LoadConfig, LoadResult, run_load
from shardserve.bench.stats import Metrics, RequestResult, compute_metrics, percentile
from shardserve.bench.workload import RequestSpec, iter_arrival_offsets, iter_random_requests

__all__ = [
    "Endpoint",
    "LoadConfig",
    "LoadResult",
    "Metrics",
    "RequestResult",
    "RequestSpec",
    "compute_metrics",
    "iter_arrival_offsets",
    "iter_random_requests",
    "percentile",
    "run_load",
    "send_request",
]
