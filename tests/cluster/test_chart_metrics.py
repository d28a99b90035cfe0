"""The chart's Prometheus objects: the operator's Service and ServiceMonitor, the Ray pods' PodMonitor.

Both monitors are off by default. When on, they are checked against the
Prometheus Operator's own models (generated from its CRDs; a field they do
not know fails), and their selectors and ports against the pods they scrape:
the operator's pod as the chart renders it, and the Ray pods as the
operator renders them and KubeRay completes them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import kubernetes_validate
import pytest

from shardserve.api.validation import load_file
from shardserve_operator.render import render_children
from shardserve_operator.settings import OperatorSettings
from tests.cluster.chart import CHART, NAMESPACE, ROOT, lint_chart, render_chart
from tests.cluster.test_chart import K8S_VERSION, MISSING_DEPENDENCY, _env, _operator_pod, _selects, by_kind

# What KubeRay does to every Ray container (ray-operator/controllers/ray/common/pod.go): Ray's
# metrics-export-port defaults to 8080, and a container port named "metrics" is added for it.
KUBERAY_METRICS_PORT_NAME = "metrics"
KUBERAY_METRICS_PORT = 8080

BOTH = {"metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"},
                                       "interval": "15s", "scrapeTimeout": "5s"},
                    "podMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}}}}
MONITOR_KINDS = {"ServiceMonitor", "PodMonitor"}


@pytest.fixture(scope="module")
def both():
    objects, notes = render_chart(BOTH)
    return by_kind(objects), notes


@pytest.fixture(scope="module")
def monitor_models():
    from cloudcoil.models.prometheus_operator.v1 import PodMonitor, ServiceMonitor

    return {"ServiceMonitor": ServiceMonitor, "PodMonitor": PodMonitor}


def _unknown_fields(rendered: Any, parsed: Any, path: str = "") -> Iterator[str]:
    """Paths in `rendered` that the model dropped (fields it does not know)."""
    if isinstance(rendered, dict):
        for key, value in rendered.items():
            if not isinstance(parsed, dict) or key not in parsed:
                yield f"{path}.{key}"
            else:
                yield from _unknown_fields(value, parsed[key], f"{path}.{key}")
    elif isinstance(rendered, list):
        for index, (item, parsed_item) in enumerate(zip(rendered, parsed, strict=False)):
            yield from _unknown_fields(item, parsed_item, f"{path}[{index}]")


def _metrics_rules(policy: dict) -> list[dict]:
    return [rule for rule in policy["spec"]["ingress"]
            if any(port["port"] == KUBERAY_METRICS_PORT_NAME for port in rule.get("ports", []))]


def _kuberay_completed(template: dict, start_params: dict) -> tuple[dict, str]:
    """The Ray container's ports after KubeRay's defaults, and Ray's metrics-export-port."""
    ray = template["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in ray.get("ports", [])}
    ports.setdefault(KUBERAY_METRICS_PORT_NAME, KUBERAY_METRICS_PORT)
    return ports, start_params.get("metrics-export-port", str(KUBERAY_METRICS_PORT))


def test_off_by_default():
    kinds = by_kind(render_chart({"networkPolicy": {"namespaces": ["llm"]}})[0])
    assert not MONITOR_KINDS & set(kinds)
    assert "Service" not in kinds  # the metrics Service comes with the ServiceMonitor
    for policy in kinds["NetworkPolicy"]:
        assert _metrics_rules(policy) == []


@pytest.mark.parametrize("which, kinds", [("serviceMonitor", {"ServiceMonitor", "Service"}), ("podMonitor", {"PodMonitor"})])
def test_each_monitor_renders_only_when_enabled(which, kinds):
    objects, _ = render_chart({"metrics": {which: {"enabled": True}}})
    assert {o["kind"] for o in objects} & (MONITOR_KINDS | {"Service"}) == kinds


def test_lint_passes_with_both():
    assert [f for f in lint_chart(BOTH) if f[0] != "INFO"] == [("WARNING", str(CHART), MISSING_DEPENDENCY)]


def test_objects_satisfy_kubernetes_and_prometheus_operator_schemas(both, monitor_models):
    kinds, _ = both
    for kind, objects in kinds.items():
        for obj in objects:
            if kind in MONITOR_KINDS:
                parsed = monitor_models[kind].model_validate(obj).model_dump(by_alias=True, exclude_none=True,
                                                                             mode="json")
                assert list(_unknown_fields(obj, parsed)) == [], kind
            else:
                kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def test_service_monitor_reaches_the_operators_metrics(both):
    kinds, notes = both
    (service,), (monitor,) = kinds["Service"], kinds["ServiceMonitor"]
    deployment, pod = _operator_pod([o for objs in kinds.values() for o in objs])
    (container,) = pod["containers"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    # Service -> operator pod, on the container port that serves /metrics.
    assert service["spec"]["selector"].items() <= pod_labels.items()
    (port,) = service["spec"]["ports"]
    (health,) = [p for p in container["ports"] if p["name"] == port["targetPort"]]
    assert health["containerPort"] == OperatorSettings.from_env(_env(container)).health_port == port["port"]
    # ServiceMonitor -> that Service, in the release's namespace, by the Service port's name.
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    assert service["metadata"]["namespace"] == monitor["metadata"]["namespace"] == NAMESPACE
    (endpoint,) = monitor["spec"]["endpoints"]
    assert (endpoint["port"], endpoint["path"]) == (port["name"], "/metrics")
    assert (endpoint["interval"], endpoint["scrapeTimeout"]) == ("15s", "5s")
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert "/metrics" in notes and "ServiceMonitor" in notes


@pytest.mark.parametrize("example", ["tiny-cpu.yaml", "llama-70b-tp4-pp2.yaml"])
def test_pod_monitor_selects_every_ray_pod_on_kuberays_metrics_port(both, example):
    kinds, _ = both
    (monitor,) = kinds["PodMonitor"]
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] == KUBERAY_METRICS_PORT_NAME and endpoint["path"] == "/metrics"
    (rayservice,) = [o for o in render_children(load_file(ROOT / "manifests" / "examples" / example))
                     if o["kind"] == "RayService"]
    cluster = rayservice["spec"]["rayClusterConfig"]
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    for group in groups:
        template = group["template"]
        assert _selects(monitor["spec"]["selector"], template["metadata"]["labels"])
        ports, export_port = _kuberay_completed(template, group.get("rayStartParams", {}))
        # The named port is where Ray exports: the operator must not move one without the other.
        assert ports[endpoint["port"]] == int(export_port)
    operator_labels = kinds["Deployment"][0]["spec"]["template"]["metadata"]["labels"]
    assert not _selects(monitor["spec"]["selector"], operator_labels)
    # Labels Ray's dashboards filter by, and which ModelDeployment a series belongs to.
    targets = {r["targetLabel"] for r in endpoint["relabelings"]}
    assert {"ray_io_cluster", "model_deployment"} <= targets


@pytest.mark.parametrize("values, selector", [
    ({}, {"any": True}),
    ({"watchNamespaces": ["team-a", "team-b"]}, {"matchNames": ["team-a", "team-b"]}),
    ({"watchNamespaces": ["team-a"], "metrics": {"podMonitor": {"enabled": True, "namespaces": ["ml"]}}},
     {"matchNames": ["ml"]}),
], ids=["every-namespace", "watched-namespaces", "listed"])
def test_pod_monitor_looks_where_the_ray_pods_are(values, selector):
    values = {"metrics": {"podMonitor": {"enabled": True}}, **values}
    (monitor,) = by_kind(render_chart(values)[0])["PodMonitor"]
    assert monitor["spec"]["namespaceSelector"] == selector
    assert monitor["metadata"]["namespace"] == NAMESPACE


@pytest.mark.parametrize("metrics_from", [[], [{"namespaceSelector": {"matchLabels": {
    "kubernetes.io/metadata.name": "monitoring"}}}]], ids=["every-peer", "monitoring-namespace"])
def test_network_policy_opens_the_metrics_port_while_the_pod_monitor_scrapes(metrics_from):
    values = {"metrics": {"podMonitor": {"enabled": True}}, "networkPolicy": {"metricsFrom": metrics_from},
              "watchNamespaces": ["team-a", "team-b"]}
    policies = by_kind(render_chart(values)[0])["NetworkPolicy"]
    assert len(policies) == 2
    for policy in policies:
        (rule,) = _metrics_rules(policy)
        assert rule["ports"] == [{"port": KUBERAY_METRICS_PORT_NAME, "protocol": "TCP"}]
        assert rule.get("from", []) == metrics_from
        kubernetes_validate.validate(policy, K8S_VERSION, strict=True)


@pytest.mark.parametrize("values, needle", [
    ({"serviceMonitor": {"interval": "30 seconds"}}, "interval"),
    ({"serviceMonitor": {"scrapeTimeout": ""}}, "scrapeTimeout"),
    ({"serviceMonitor": {"labels": {"release": 1}}}, "labels"),
    ({"serviceMonitor": {"enable": True}}, "enable"),
    ({"podMonitor": {"port": "8080"}}, "port"),
    ({"podMonitor": {"port": "Metrics"}}, "port"),
    ({"podMonitor": {"port": "ray-metrics-export"}}, "port"),
    ({"podMonitor": {"port": "ray--metrics"}}, "port"),
    ({"podMonitor": {"namespaces": ["Team_A"]}}, "namespaces"),
    ({"podMonitor": {"enabled": "yes"}}, "enabled"),
    ({"grafana": {"enabled": True}}, "grafana"),
], ids=["interval-words", "timeout-empty", "label-not-string", "misspelt-key", "port-number", "port-uppercase",
        "port-too-long", "port-double-hyphen", "namespace-not-dns", "enabled-not-bool", "unknown-section"])
def test_values_schema_rejects_bad_metrics_values(values, needle):
    errors = [f for f in lint_chart({"metrics": values}) if f[0] == "ERROR"]
    assert errors and any(needle in message for _, _, message in errors), errors
