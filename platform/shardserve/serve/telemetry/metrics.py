"""Request metrics shardserve adds to what Ray Serve and vLLM already export.

Requests by status, latencies, tokens and queues come from Serve's and vLLM's
own metrics (docs/observability.md, "Metrics"); only what neither counts is here. Metrics are
Ray's (ray.util.metrics), exported with every other Ray metric.
"""

from __future__ import annotations

from typing import Any, Optional

from ray.util.metrics import Counter

REJECTED = "shardserve_rejected_requests"
_rejected: Optional[Any] = None


def record_rejected(application: str, reason: str) -> None:
    """One request the replica's admission limit turned away (HTTP 429)."""
    global _rejected
    if _rejected is None:
        _rejected = Counter(REJECTED, "Requests a model replica's admission limit turned away with HTTP 429 before "
                            "they reached the engine, by reason (queue_full: the replica held "
                            "serving.maxOngoingRequests + maxQueuedRequests).", tag_keys=("application", "reason"))
    _rejected.inc(tags={"application": application, "reason": reason})
