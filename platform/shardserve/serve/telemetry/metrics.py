"""Request metrics shardserve adds to what Ray Serve and vLLM already export.

Requests by status, latencies, tokens and queues come from Serve's and vLLM's
own metrics (docs/observability.md, "Metrics"); only what neither counts is here. Metrics are
Ray's (ray.util.metrics), exported with every other Ray metric.
"""

from __future__ import annotations

from typing import Any, Optional

from ray.util.metrics import Counter, Histogram

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


ADAPTER_LOADS = "shardserve_adapter_loads"
ADAPTER_EVICTIONS = "shardserve_adapter_evictions"
ADAPTER_LOAD_SECONDS = "shardserve_adapter_load_seconds"
ADAPTER_REQUESTS = "shardserve_adapter_requests"
# An adapter from local disk loads in well under a second; a download takes longer.
ADAPTER_LOAD_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_adapter_metrics: Optional[tuple[Any, Any, Any, Any]] = None


def _adapters() -> tuple[Any, Any, Any, Any]:
    global _adapter_metrics
    if _adapter_metrics is None:
        tags = ("application", "adapter")
        _adapter_metrics = (
            Counter(ADAPTER_LOADS, "LoRA adapters a model replica loaded (a first load, or again after eviction).",
                    tag_keys=tags),
            Counter(ADAPTER_EVICTIONS, "LoRA adapters a model replica evicted, least recently used first, to load "
                    "another past lora.maxCpuAdapters.", tag_keys=tags),
            Histogram(ADAPTER_LOAD_SECONDS, "Time a LoRA adapter's load took: finding or downloading its files, "
                      "checking its config, and loading it into the engine.", boundaries=list(ADAPTER_LOAD_BUCKETS),
                      tag_keys=tags),
            Counter(ADAPTER_REQUESTS, "Requests a model replica ran with a LoRA adapter (Serve's and vLLM's request "
                    "metrics count them under the base model).", tag_keys=tags),
        )
    return _adapter_metrics


def record_adapter_loaded(application: str, adapter: str, seconds: float) -> None:
    loads, _, load_seconds, _ = _adapters()
    tags = {"application": application, "adapter": adapter}
    loads.inc(tags=tags)
    load_seconds.observe(seconds, tags=tags)


def record_adapter_evicted(application: str, adapter: str) -> None:
    _adapters()[1].inc(tags={"application": application, "adapter": adapter})


def record_adapter_request(application: str, adapter: str) -> None:
    _adapters()[3].inc(tags={"application": application, "adapter": adapter})


TENANT_REQUESTS = "shardserve_tenant_requests"
TENANT_TOKENS = "shardserve_tenant_tokens"
_tenant_metrics: Optional[tuple[Any, Any]] = None


def _tenants() -> tuple[Any, Any]:
    global _tenant_metrics
    if _tenant_metrics is None:
        _tenant_metrics = (
            Counter(TENANT_REQUESTS, "Requests by tenant (the API key's name, never the key) and outcome: admitted, "
                    "or the quota that refused it (requests, tokens, concurrency, too_large).",
                    tag_keys=("application", "tenant", "outcome")),
            Counter(TENANT_TOKENS, "Prompt plus completion tokens of tenants' requests, as their usage reported.",
                    tag_keys=("application", "tenant")),
        )
    return _tenant_metrics


def record_tenant_request(application: str, tenant: str, outcome: str) -> None:
    _tenants()[0].inc(tags={"application": application, "tenant": tenant, "outcome": outcome})


def record_tenant_tokens(application: str, tenant: str, tokens: int) -> None:
    _tenants()[1].inc(tokens, tags={"application": application, "tenant": tenant})
