"""The operator's /metrics, scraped over HTTP from the running operator, against what the API server saw.

Pure parts (request kinds, gauge counts) are tables at the end; error
reasons are classify's (test_failures). The rest runs the real operator
(kopf, the official client) against the emulated API server, as
test_operator_integration does.
"""

from __future__ import annotations

from typing import Optional

import pytest
from prometheus_client.parser import text_string_to_metric_families

from operator_harness import MD_PATH, RS_PATH, SVC_PATH, eventually, tiny_document
from shardserve_operator.kube import compute_request_kind
from shardserve_operator.metrics import ERROR_REASONS, OperatorMetrics, compute_child_counts, compute_ready_counts
from test_operator_integration import converged, ready_status, settled

Samples = dict[tuple[str, frozenset], float]


async def scrape(cluster, running, accept: Optional[str] = None) -> tuple[Samples, str]:
    """Every sample of the operator's /metrics: (name, labels) -> value, and the content type."""
    url = f"http://127.0.0.1:{running.operator.health_server.port}/metrics"
    headers = {"Accept": accept} if accept else {}
    async with cluster.session.get(url, headers=headers) as response:
        assert response.status == 200
        text = await response.text()
        content_type = response.headers["Content-Type"]
    if accept:
        return {}, content_type
    samples = {(s.name, frozenset(s.labels.items())): s.value
               for family in text_string_to_metric_families(text) for s in family.samples}
    return samples, content_type


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sample with exactly these labels (0 if absent)."""
    return samples.get(("shardserve_operator_" + name, frozenset(labels.items())), 0.0)


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum over every sample of `name` whose labels include these."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == "shardserve_operator_" + name and want <= ls)


def requests_seen(cluster, method: str, path: str) -> int:
    return sum(1 for r in cluster.emulator.requests if r.method.value == method and r.url.path == path)


@pytest.mark.asyncio
async def test_metrics_count_managed_objects_reconciles_requests_and_events(cluster, operator):
    await cluster.create_md(tiny_document("tiny"))
    await cluster.create_md(tiny_document("b", ingress={"host": "b.example.com", "className": "nginx"}))
    await cluster.create_md(tiny_document("bad", parallelism={"tensor": 3, "pipeline": 1}))
    for name in ("tiny", "b", "bad"):
        await converged(cluster, name)
    await cluster.patch(RS_PATH.format(ns="default") + "/tiny/status", {"status": ready_status()})
    await eventually(lambda: (cluster.condition("tiny", "Ready") or {}).get("status") == "True", 10, "tiny Ready")
    await settled(cluster)

    samples, content_type = await scrape(cluster, operator)
    assert content_type.startswith("text/plain; version=")
    # Objects managed.
    assert value(samples, "model_deployments", ready="True") == 1
    assert value(samples, "model_deployments", ready="False") == 2
    assert value(samples, "model_deployments", ready="Unknown") == 0
    assert value(samples, "children", kind="RayService") == 2  # "bad" has none
    assert value(samples, "children", kind="Service") == 2
    assert value(samples, "children", kind="Ingress") == 1
    assert value(samples, "leader") == 1
    # Reconciles: the operator's own count, split by trigger and result.
    reconciles = operator.controller.reconciles
    assert total(samples, "reconciles_total") == reconciles >= 4
    assert value(samples, "reconcile_duration_seconds_count") == reconciles
    assert total(samples, "reconciles_total", trigger="modeldeployment") >= 3
    assert total(samples, "reconciles_total", trigger="rayservice") >= 1  # the status patch of "tiny"
    assert total(samples, "reconciles_total", result="error") == value(samples, "reconcile_errors_total",
                                                                       reason="invalid_spec") == 1
    assert all(("shardserve_operator_reconcile_errors_total", frozenset({("reason", r)})) in samples
               for r in ERROR_REASONS)
    # API requests, against what the API server received.
    for name in ("tiny", "b", "bad"):
        path = RS_PATH.format(ns="default") + "/" + name
        assert requests_seen(cluster, "GET", path) > 0
    gets = sum(requests_seen(cluster, "GET", RS_PATH.format(ns="default") + "/" + n) for n in ("tiny", "b", "bad"))
    assert total(samples, "api_requests_total", verb="get", resource="rayservices") == gets
    # (this API server answers a create with 200, as kmock does)
    assert value(samples, "api_requests_total", verb="create", resource="rayservices", code="200") == 2
    assert value(samples, "api_requests_total", verb="create", resource="ingresses", code="200") == 1
    status_patches = sum(requests_seen(cluster, "PATCH", MD_PATH.format(ns="default") + f"/{n}/status")
                         for n in ("tiny", "b", "bad"))
    assert value(samples, "api_requests_total", verb="patch", resource="modeldeployments/status",
                 code="200") == status_patches >= 4
    assert value(samples, "api_request_duration_seconds_count", verb="get") == \
        total(samples, "api_requests_total", verb="get")
    # Events: one metric sample per posted Event.
    events = cluster.events()
    assert total(samples, "events_total") == len(events) == \
        value(samples, "api_requests_total", verb="create", resource="events", code="200")
    # SpecValid, ResourcesApplied, Ready
    assert value(samples, "events_total", type="Warning", reason="InvalidSpec") == \
        sum(1 for e in events if (e["type"], e["reason"]) == ("Warning", "InvalidSpec")) == 3
    assert value(samples, "events_total", type="Normal", reason="Serving") == 1
    # The process itself, and the version.
    assert ("process_resident_memory_bytes", frozenset()) in samples
    assert any(n == "shardserve_operator_build_info" for n, _ in samples)

    # A deleted ModelDeployment leaves the gauges.
    status, _ = await cluster.request("DELETE", MD_PATH.format(ns="default") + "/b")
    assert status == 200
    async def b_gone() -> bool:
        samples, _ = await scrape(cluster, operator)
        return total(samples, "model_deployments") == 2 and \
            (value(samples, "children", kind="Service"), value(samples, "children", kind="Ingress")) == (1, 0)
    await eventually(b_gone, 10, "b gone from the gauges")
    # A scraper that asks for OpenMetrics gets it.
    _, content_type = await scrape(cluster, operator, accept="application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")


@pytest.mark.asyncio
async def test_failed_api_requests_count_as_reconcile_errors_by_cause(cluster, operator):
    faults = [
        cluster.emulator.inject("GET", r"/rayservices/tiny$", 500),
        cluster.emulator.inject("POST", r"/services$", 429, retry_after="0"),
    ]
    await cluster.create_md(tiny_document())
    await converged(cluster)
    await settled(cluster)
    assert [f.hits for f in faults] == [1, 1]
    samples, _ = await scrape(cluster, operator)
    assert value(samples, "api_requests_total", verb="get", resource="rayservices", code="500") == 1
    assert value(samples, "api_requests_total", verb="create", resource="services", code="429") == 1
    assert value(samples, "reconcile_errors_total", reason="server_error") == 1
    assert value(samples, "reconcile_errors_total", reason="throttled") == 1
    assert total(samples, "reconcile_errors_total") == 2 == total(samples, "reconciles_total", result="error")
    assert total(samples, "reconciles_total", result="success") >= 1

    # A name taken by someone else's object: counted on every retry until it is freed.
    foreign = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "other", "namespace": "default"},
               "spec": {"ports": [{"port": 80}]}}
    await cluster.create(SVC_PATH.format(ns="default"), foreign)
    await cluster.create_md(tiny_document("other"))
    await eventually(lambda: (cluster.condition("other", "ResourcesApplied") or {}).get("reason") == "NotOwned",
                     10, "NotOwned")

    async def not_owned_counted() -> bool:
        samples, _ = await scrape(cluster, operator)
        return value(samples, "reconcile_errors_total", reason="not_owned") >= 1
    await eventually(not_owned_counted, 10, "not_owned counted")


# ------------------------------------------------------------ pure parts

@pytest.mark.parametrize("method, path, expected", [
    ("GET", "/api/v1/namespaces/ns/services/tiny", ("get", "services")),
    ("GET", "/api/v1/namespaces/ns/services", ("list", "services")),
    ("POST", "/apis/ray.io/v1/namespaces/ns/rayservices", ("create", "rayservices")),
    ("PUT", "/apis/ray.io/v1/namespaces/ns/rayservices/tiny", ("update", "rayservices")),
    ("PATCH", "/apis/shardserve.dev/v1alpha1/namespaces/ns/modeldeployments/tiny/status",
     ("patch", "modeldeployments/status")),
    ("DELETE", "/apis/networking.k8s.io/v1/namespaces/ns/ingresses/tiny", ("delete", "ingresses")),
    ("PUT", "/apis/coordination.k8s.io/v1/namespaces/ns/leases/shardserve-operator", ("update", "leases")),
    ("GET", "/api/v1/namespaces/ns", ("get", "namespaces")),
    ("GET", "/api/v1/namespaces", ("list", "namespaces")),
])
def test_request_kind_names_verbs_and_resources_as_rbac_does(method, path, expected):
    assert compute_request_kind(method, path) == expected


def test_gauge_counts_keep_every_label_value():
    assert compute_ready_counts({}) == {"True": 0, "False": 0, "Unknown": 0}
    assert compute_ready_counts({("a", "x"): "True", ("a", "y"): "False", ("b", "x"): "Unknown",
                                 ("b", "y"): "weird"}) == {"True": 1, "False": 1, "Unknown": 2}
    assert compute_child_counts(["RayService", "Service", "Ingress"], ["Service", "RayService", "Service"]) == \
        {"RayService": 1, "Service": 2, "Ingress": 0}


def test_each_operator_has_its_own_registry():
    first, second = OperatorMetrics(), OperatorMetrics()
    first.observe_reconcile("modeldeployment", 0.01)
    body, _ = second.render()
    assert b'shardserve_operator_reconciles_total{result="success",trigger="modeldeployment"}' not in body
    assert b'shardserve_operator_reconciles_total{result="success",trigger="modeldeployment"} 1.0' in first.render()[0]

