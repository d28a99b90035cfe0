"""`shardserve bench`: a load generator for OpenAI-compatible endpoints, with
metrics defined as in vLLM's serving benchmark, and a side-by-side comparison
of bare vLLM and `shardserve run`.

Only the pure parts are re-exported here: the HTTP client and the runner
(`shardserve.bench.client`, `shardserve.bench.runner`) need httpx and tqdm,
which the CLI loads only when a benchmark runs.
"""

from shardserve.bench.stats import Metrics, RequestResult, compute_metrics, percentile
from shardserve.bench.workload import RequestSpec, iter_arrival_offsets, iter_random_requests

__all__ = [
    "Metrics",
    "RequestResult",
    "RequestSpec",
    "compute_metrics",
    "iter_arrival_offsets",
    "iter_random_requests",
    "percentile",
]
