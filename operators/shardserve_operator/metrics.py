"""The operator's Prometheus metrics: every metric is defined and recorded here.

Each Operator owns one registry (so several operators in one process, as in
tests, never mix their counts); health.py serves it at /metrics on the health
port. Counters and histograms are recorded as things happen; the gauges of
what is managed are computed from the controller's memory at scrape time, so
they cannot drift from it.

  shardserve_operator_reconciles_total{trigger,result}     reconciles run; trigger: modeldeployment
                                                           (its own change or resume) or the child kind
                                                           whose watch event caused it; result: success|error
  shardserve_operator_reconcile_duration_seconds           time of one reconcile (histogram)
  shardserve_operator_reconcile_errors_total{reason}       failed reconciles by cause (ERROR_REASONS)
  shardserve_operator_model_deployments{ready}             ModelDeployments watched, by their Ready
                                                           condition (True, False, Unknown)
  shardserve_operator_children{kind}                       children (RayService, Service, Ingress) as
                                                           the last reconcile of each ModelDeployment left them
  shardserve_operator_api_requests_total{verb,resource,code}  the operator's own API requests (kopf's
                                                           watch streams are not counted); code "error"
                                                           when no HTTP answer came
  shardserve_operator_api_request_duration_seconds{verb}   their latency (histogram)
  shardserve_operator_events_total{type,reason}            Events posted about ModelDeployments
  shardserve_operator_leader                               1 while this replica holds the Lease and runs kopf
  shardserve_operator_build_info{version}                  always 1
  process_*, python_*                                      prometheus_client's process and runtime metrics
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from importlib import metadata
from typing import Optional

from prometheus_client import CollectorRegistry, Counter, Histogram, Info
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

PREFIX = "shardserve_operator_"

# Condition status values a ModelDeployment's Ready can have; "Unknown" also
# covers one whose status the operator has not written yet.
READY_VALUES = ("True", "False", "Unknown")
# Every reason reconcile_errors_total may carry (see classify).
ERROR_REASONS = ("invalid_spec", "not_owned", "kuberay_unsupported", "claim_not_found", "conflict", "throttled",
                 "server_error", "timeout", "not_found", "forbidden", "rejected", "transport", "other")
RESULTS = ("success", "error")
# A reconcile is a few API round trips; a slow API server stretches it to seconds.
RECONCILE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
API_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


@dataclass(frozen=True)
class ManagedState:
    """What the gauges show, read from the running operator at scrape time."""

    leading: bool = False
    # (namespace, name) -> status of the Ready condition ("True", "False", "Unknown")
    ready: Mapping[tuple[str, str], str] = field(default_factory=dict)
    # kind -> how many of them the operator's ModelDeployments have
    children: Mapping[str, int] = field(default_factory=dict)


def compute_ready_counts(ready: Mapping[tuple[str, str], str]) -> dict[str, int]:
    """ModelDeployments per Ready value; every value is present (0 included), so series never vanish."""
    counts = {value: 0 for value in READY_VALUES}
    for value in ready.values():
        counts[value if value in counts else "Unknown"] += 1
    return counts


def compute_child_counts(kinds: Iterable[str], present: Iterable[str]) -> dict[str, int]:
    """Children per kind, every kind in `kinds` present (0 included)."""
    counts = {kind: 0 for kind in kinds}
    for kind in present:
        counts[kind] = counts.get(kind, 0) + 1
    return counts


def read_version() -> str:
    try:
        return metadata.version("shardserve")
    except metadata.PackageNotFoundError:
        return "unknown"


class _StateCollector:
    """Gauges computed from a ManagedState each time Prometheus scrapes."""

    def __init__(self, read_state: Callable[[], ManagedState], child_kinds: Iterable[str]):
        self.read_state = read_state
        self.child_kinds = tuple(child_kinds)

    def describe(self) -> list[Metric]:
        return list(self._families(ManagedState()))

    def collect(self) -> Iterator[Metric]:
        return self._families(self.read_state())

    def _families(self, state: ManagedState) -> Iterator[Metric]:
        leader = GaugeMetricFamily(PREFIX + "leader", "1 while this replica holds the Lease and runs kopf.")
        leader.add_metric([], 1.0 if state.leading else 0.0)
        yield leader
        mds = GaugeMetricFamily(PREFIX + "model_deployments",
                                "ModelDeployments the operator watches, by the status of their Ready condition.",
                                labels=["ready"])
        for value, count in compute_ready_counts(state.ready).items():
            mds.add_metric([value], count)
        yield mds
        children = GaugeMetricFamily(PREFIX + "children",
                                     "Children of the watched ModelDeployments, as their last reconcile left them.",
                                     labels=["kind"])
        for kind in self.child_kinds:
            children.add_metric([kind], state.children.get(kind, 0))
        yield children


class OperatorMetrics:
    """One operator's metrics and the only place they are recorded."""

    def __init__(self, read_state: Optional[Callable[[], ManagedState]] = None,
                 child_kinds: Iterable[str] = ("RayService", "Service", "Ingress")):
        self.registry = CollectorRegistry(auto_describe=True)
        self.reconciles = Counter(PREFIX + "reconciles", "Reconciles run, by what triggered them and how they ended.",
                                  ["trigger", "result"], registry=self.registry)
        self.reconcile_duration = Histogram(PREFIX + "reconcile_duration_seconds", "Time one reconcile took.",
                                            buckets=RECONCILE_BUCKETS, registry=self.registry)
        self.reconcile_errors = Counter(PREFIX + "reconcile_errors", "Failed reconciles, by cause.", ["reason"],
                                        registry=self.registry)
        self.api_requests = Counter(PREFIX + "api_requests",
                                    "Requests the operator sent to the Kubernetes API (watch streams aside).",
                                    ["verb", "resource", "code"], registry=self.registry)
        self.api_request_duration = Histogram(PREFIX + "api_request_duration_seconds",
                                              "Latency of the operator's Kubernetes API requests.", ["verb"],
                                              buckets=API_BUCKETS, registry=self.registry)
        self.events = Counter(PREFIX + "events", "Events posted about ModelDeployments.", ["type", "reason"],
                              registry=self.registry)
        Info(PREFIX + "build", "The operator's version.", registry=self.registry).info({"version": read_version()})
        # Error reasons start at 0, so a rate() over them works before the first error.
        for reason in ERROR_REASONS:
            self.reconcile_errors.labels(reason=reason)
        self.registry.register(_StateCollector(read_state or ManagedState, child_kinds))
        # The process's CPU, memory, file descriptors, GC and Python version, as
        # every Python exporter reports them (the global instances belong to
        # the global registry; these belong to this one).
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)

    # ---- recording ----

    def observe_reconcile(self, trigger: str, seconds: float, error_reason: Optional[str] = None) -> None:
        self.reconciles.labels(trigger=trigger, result="success" if error_reason is None else "error").inc()
        self.reconcile_duration.observe(seconds)
        if error_reason is not None:
            self.reconcile_errors.labels(reason=error_reason).inc()

    def observe_api_request(self, verb: str, resource: str, code: str, seconds: float) -> None:
        self.api_requests.labels(verb=verb, resource=resource, code=code).inc()
        self.api_request_duration.labels(verb=verb).observe(seconds)

    def count_event(self, type_: str, reason: str) -> None:
        self.events.labels(type=type_, reason=reason).inc()

    # ---- exposition ----

    def render(self, accept: Optional[str] = None) -> tuple[bytes, str]:
        """(body, content type) for a scrape; OpenMetrics when the scraper asks for it."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type
