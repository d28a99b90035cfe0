"""The Helm chart: Helm's own lint and rendering (Go library), Kubernetes' schemas, and the operator's settings."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from shardserve.api.crd import build_crd
from shardserve.api.kuberay import MIN_KUBERAY_VERSION_TEXT
from shardserve.api.validation import load_file
from shardserve_operator import naming
from shardserve_operator.render import render_children
from shardserve_operator.render.rayservice import HEAD_PORTS, SERVE_PORT_NAME
from shardserve_operator.settings import OperatorSettings
from tests.cluster.chart import CHART, INSTALL_YAML, ROOT, chart_crds, lint_chart, render_chart, render_install_yaml

K8S_VERSION = kubernetes_validate.latest_version()
MISSING_DEPENDENCY = "chart directory is missing these dependencies: kuberay-operator"

# Everything non-default a user is likely to set, at once.
CUSTOM = {
    "image": {"repository": "registry.example.com/ml/shardserve-operator", "tag": "1.2.3", "pullPolicy": "Always"},
    "imagePullSecrets": [{"name": "registry-creds"}],
    "runtimeImage": {"repository": "registry.example.com/ml/shardserve", "tag": "1.2.3-cuda"},
    "replicaCount": 2,
    "watchNamespaces": ["team-a", "team-b"],
    "logLevel": "DEBUG",
    "healthPort": 9090,
    "rayHead": {"cpu": "2", "memory": "8Gi"},
    "gpuProductLabel": "",
    "resources": {"requests": {"cpu": "200m", "memory": "300Mi"}, "limits": {"cpu": "1", "memory": "1Gi"}},
    "serviceAccount": {"create": True, "name": "llm-operator", "annotations": {"example.com/role": "ops"}},
    "podAnnotations": {"prometheus.io/scrape": "false"},
    "podLabels": {"team": "ml"},
    "nodeSelector": {"kubernetes.io/os": "linux"},
    "tolerations": [{"key": "ops", "operator": "Exists", "effect": "NoSchedule"}],
    "priorityClassName": "system-cluster-critical",
    "networkPolicy": {
        "enabled": True,
        "serveFrom": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}}],
        "kuberayOperator": {"namespace": "kuberay-system", "podLabels": {"app.kubernetes.io/name": "kuberay-operator"}},
        "extraIngress": [{"from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}],
                          "ports": [{"port": 8080, "protocol": "TCP"}]}],
    },
    "kuberay-operator": {"enabled": True},
}


def by_kind(objects: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for obj in objects:
        out.setdefault(obj["kind"], []).append(obj)
    return out


@pytest.fixture(scope="module")
def default_render():
    return render_chart()


@pytest.fixture(scope="module")
def custom_render():
    return render_chart(CUSTOM)


# ------------------------------------------------------------ helm lint

def _problems(findings):
    return [f for f in findings if f[0] != "INFO"]


@pytest.mark.parametrize("values", [None, CUSTOM], ids=["default-values", "custom-values"])
def test_helm_lint_passes(values):
    findings = lint_chart(values)
    # The KubeRay chart is an optional dependency fetched by `helm dependency
    # build`; it cannot be vendored here, so lint reports it missing (a warning).
    assert _problems(findings) == [("WARNING", str(CHART), MISSING_DEPENDENCY)], findings


@pytest.mark.parametrize("values, needle", [
    ({"replicaCount": 2, "leaderElection": {"enabled": False}}, "leaderElection"),
    ({"watchNamespaces": ["Team_A"]}, "watchNamespaces"),
    ({"logLevel": "LOUD"}, "logLevel"),
    ({"replicas": 2}, "replicas"),
    ({"image": {"repository": ""}}, "repository"),
    ({"networkPolicy": {"kuberayOperator": {"podLabels": {"app.kubernetes.io/name": None}}}}, "podLabels"),
], ids=["replicas-without-leader-election", "namespace-not-dns", "log-level", "unknown-key", "empty-image",
        "kuberay-selector-empty"])
def test_helm_lint_rejects_bad_values(values, needle):
    errors = [f for f in lint_chart(values) if f[0] == "ERROR"]
    assert errors and any(needle in message for _, _, message in errors), errors


def test_values_file_satisfies_values_schema():
    schema = json.loads((CHART / "values.schema.json").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    jsonschema.validate(yaml.safe_load((CHART / "values.yaml").read_text()), schema)
    jsonschema.validate(CUSTOM, schema)


# ------------------------------------------------------------ rendered objects

@pytest.mark.parametrize("which", ["default_render", "custom_render"])
def test_rendered_objects_satisfy_kubernetes_schemas(which, request):
    objects, _ = request.getfixturevalue(which)
    assert objects
    for obj in objects:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def test_chart_crd_is_the_generated_one():
    assert chart_crds() == [build_crd()]


def _operator_pod(objects):
    (deployment,) = by_kind(objects)["Deployment"]
    return deployment, deployment["spec"]["template"]["spec"]


@pytest.mark.parametrize("which", ["default_render", "custom_render"])
def test_operator_pod_meets_the_restricted_pod_security_profile(which, request):
    objects, _ = request.getfixturevalue(which)
    _, pod = _operator_pod(objects)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert not any(pod.get(key) for key in ("hostNetwork", "hostPID", "hostIPC"))
    assert all("hostPath" not in volume for volume in pod.get("volumes", []))
    for container in pod["containers"] + pod.get("initContainers", []):
        ctx = container["securityContext"]
        assert ctx["allowPrivilegeEscalation"] is False
        assert ctx["readOnlyRootFilesystem"] is True
        assert ctx["capabilities"] == {"drop": ["ALL"]}
        assert not ctx.get("privileged")
        assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]


def _env(container) -> dict[str, str]:
    values = {}
    for var in container["env"]:
        if "value" in var:
            values[var["name"]] = var["value"]
        else:  # downward API: what the kubelet would fill in
            values[var["name"]] = {"metadata.name": "shardserve-abc12", "metadata.namespace": "shardserve-system"}[
                var["valueFrom"]["fieldRef"]["fieldPath"]]
    return values


@pytest.mark.parametrize("which, values", [("default_render", {}), ("custom_render", CUSTOM)])
def test_operator_reads_the_settings_the_chart_passes(which, values, request):
    objects, _ = request.getfixturevalue(which)
    deployment, pod = _operator_pod(objects)
    (container,) = pod["containers"]
    env = _env(container)
    assert all(name.startswith("SHARDSERVE_") or name in ("POD_NAME", "POD_NAMESPACE", "PYTHONDONTWRITEBYTECODE")
               for name in env)
    settings = OperatorSettings.from_env(env)
    merged = {**yaml.safe_load((CHART / "values.yaml").read_text()), **values}
    runtime = merged["runtimeImage"]
    assert settings.render.default_image == f"{runtime['repository']}:{runtime['tag'] or '0.1.0'}"
    assert settings.namespaces == tuple(merged["watchNamespaces"])
    assert settings.health_port == merged["healthPort"] == container["ports"][0]["containerPort"]
    assert settings.log_level == merged["logLevel"]
    assert (settings.render.head_cpu, settings.render.head_memory) == (merged["rayHead"]["cpu"], merged["rayHead"]["memory"])
    assert settings.render.gpu_product_label == merged["gpuProductLabel"]
    lease = settings.leader_election
    assert lease.enabled and lease.lease_namespace == "shardserve-system" and lease.identity == "shardserve-abc12"
    assert deployment["spec"]["replicas"] == merged["replicaCount"]
    image = merged["image"]
    assert container["image"] == f"{image['repository']}:{image['tag'] or '0.1.0'}"
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz"), ("startupProbe", "/healthz")):
        assert container[probe]["httpGet"] == {"path": path, "port": "health"}
    assert container["command"] == ["shardserve", "operator"]
    # The Role for the Lease names the Lease the operator takes.
    roles = {r["metadata"]["name"]: r for r in by_kind(objects)["Role"]}
    lease_role = roles[deployment["metadata"]["name"] + "-leader-election"]
    assert lease_role["metadata"]["namespace"] == lease.lease_namespace
    assert any(rule.get("resourceNames") == [lease.lease_name] for rule in lease_role["rules"])


def test_leader_election_off_drops_the_lease_role():
    objects, _ = render_chart({"leaderElection": {"enabled": False}})
    (deployment,) = by_kind(objects)["Deployment"]
    env = _env(deployment["spec"]["template"]["spec"]["containers"][0])
    assert OperatorSettings.from_env(env).leader_election.enabled is False
    assert "Role" not in by_kind(objects)


def test_service_account_is_the_one_bound(custom_render):
    objects, _ = custom_render
    kinds = by_kind(objects)
    (account,) = kinds["ServiceAccount"]
    _, pod = _operator_pod(objects)
    assert account["metadata"]["name"] == pod["serviceAccountName"] == "llm-operator"
    for binding in kinds["RoleBinding"] + kinds["ClusterRoleBinding"]:
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "llm-operator",
                                        "namespace": "shardserve-system"}]


def test_watched_namespaces_get_roles_and_nothing_cluster_wide_but_reads(custom_render):
    kinds = by_kind(custom_render[0])
    (cluster_role,) = kinds["ClusterRole"]
    # Reads only; the named reads are the CRDs checked at start-up: KubeRay's RayService (review #7)
    # and the operator's own (review #25).
    assert all(set(rule["verbs"]) <= {"list", "watch"} or
               (rule["verbs"] == ["get"]
                and rule.get("resourceNames") == ["rayservices.ray.io", "modeldeployments.shardserve.dev"])
               for rule in cluster_role["rules"])
    assert {r for rule in cluster_role["rules"] for r in rule["resources"]} == {"customresourcedefinitions", "namespaces"}
    namespaced = {(r["metadata"]["namespace"], r["metadata"]["name"]) for r in kinds["Role"]}
    assert {("team-a", "shardserve"), ("team-b", "shardserve")} <= namespaced
    assert {b["metadata"]["namespace"] for b in kinds["RoleBinding"]} == {"team-a", "team-b", "shardserve-system"}


def test_rbac_off_renders_no_rbac():
    objects, _ = render_chart({"rbac": {"create": False}})
    assert not {"ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"} & set(by_kind(objects))


# ------------------------------------------------------------ NetworkPolicy vs the operator's Ray pods

def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expr in selector.get("matchExpressions") or ():
        present = expr["key"] in labels
        if expr["operator"] == "Exists" and not present:
            return False
        if expr["operator"] == "In" and labels.get(expr["key"]) not in expr["values"]:
            return False
    return True


def _ray_pods(example: str = "tiny-cpu.yaml"):
    md = load_file(ROOT / "manifests" / "examples" / example)
    (rayservice,) = [o for o in render_children(md) if o["kind"] == "RayService"]
    cluster = rayservice["spec"]["rayClusterConfig"]
    head = cluster["headGroupSpec"]["template"]
    workers = [group["template"] for group in cluster["workerGroupSpecs"]]
    # KubeRay adds its own labels to the pods; ours come from the templates.
    return [("head", head), *[("worker", w) for w in workers]]


# The namespaces a cluster-wide install lists for its Ray pods' policy.
LISTED = {"networkPolicy": {"namespaces": ["llm", "team-c"]}}


@pytest.fixture(scope="module")
def listed_render():
    return render_chart(LISTED)


def test_network_policy_selects_ray_pods_and_only_them(listed_render):
    policies = by_kind(listed_render[0])["NetworkPolicy"]
    assert [p["metadata"]["namespace"] for p in policies] == ["llm", "team-c"]
    selector = policies[0]["spec"]["podSelector"]
    for role, template in _ray_pods():
        assert _selects(selector, template["metadata"]["labels"]), f"{role} pod is not selected"
    _, operator_pod = _operator_pod(listed_render[0])
    operator_labels = by_kind(listed_render[0])["Deployment"][0]["spec"]["template"]["metadata"]["labels"]
    assert not _selects(selector, operator_labels) and operator_pod


def test_cluster_wide_install_renders_no_policy_it_cannot_place_and_says_so(default_render):
    """review #13: with every namespace watched and none listed, a policy in `default` alone protected nothing else."""
    objects, notes = default_render
    assert "NetworkPolicy" not in by_kind(objects)
    assert "no NetworkPolicy for Ray pods was rendered" in notes and "networkPolicy.namespaces" in notes
    _, listed_notes = render_chart(LISTED)
    assert "The NetworkPolicy for Ray pods is in: llm, team-c" in listed_notes
    assert "WARNING" not in listed_notes


def _kuberay_peers(policy):
    return [peer for rule in policy["spec"]["ingress"] for peer in rule.get("from") or ()
            if peer.get("podSelector", {}).get("matchLabels") == {"app.kubernetes.io/name": "kuberay-operator"}]


def test_network_policy_admits_kuberay_from_any_namespace_unless_one_is_set(listed_render, custom_render):
    """review #13: KubeRay runs in its own namespace (kuberay-system in its docs and our e2e), not in ours."""
    for policy in by_kind(listed_render[0])["NetworkPolicy"]:
        assert _kuberay_peers(policy) == [{"namespaceSelector": {},
                                           "podSelector": {"matchLabels": {"app.kubernetes.io/name": "kuberay-operator"}}}]
    for policy in by_kind(custom_render[0])["NetworkPolicy"]:
        (peer,) = _kuberay_peers(policy)
        assert peer["namespaceSelector"] == {"matchLabels": {"kubernetes.io/metadata.name": "kuberay-system"}}


def test_network_policy_opens_only_the_serve_port_to_everyone(listed_render, custom_render):
    for objects, open_to in ((listed_render[0], None), (custom_render[0], CUSTOM["networkPolicy"]["serveFrom"])):
        policies = by_kind(objects)["NetworkPolicy"]
        assert policies
        for policy in policies:
            rules = policy["spec"]["ingress"]
            assert policy["spec"]["policyTypes"] == ["Ingress"]
            unrestricted = [rule for rule in rules if not rule.get("from")]
            assert [rule["ports"] for rule in unrestricted] == ([[{"port": SERVE_PORT_NAME, "protocol": "TCP"}]]
                                                               if open_to is None else [])
            serve = [rule for rule in rules if rule.get("ports") == [{"port": SERVE_PORT_NAME, "protocol": "TCP"}]]
            assert len(serve) == 1 and serve[0].get("from") == open_to
            # Every other peer is limited to shardserve's Ray pods in this namespace, KubeRay, or what the user added.
            for rule in rules:
                if rule in serve or rule in CUSTOM["networkPolicy"]["extraIngress"]:
                    continue
                for peer in rule["from"]:
                    if "namespaceSelector" in peer:
                        assert peer["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "kuberay-operator"}
                        assert {p["port"] for p in rule["ports"]} == {8265, 52365}
                    else:
                        assert _selects(peer["podSelector"], _ray_pods()[0][1]["metadata"]["labels"])
    assert {p.get("metadata", {}).get("namespace") for p in by_kind(custom_render[0])["NetworkPolicy"]} == \
        {"team-a", "team-b"}


def test_ray_ports_the_policy_protects_are_the_ones_the_operator_opens():
    for role, template in _ray_pods("llama-70b-tp4-pp2.yaml"):
        ports = {p["name"]: p["containerPort"] for c in template["spec"]["containers"] for p in c["ports"]}
        assert SERVE_PORT_NAME in ports, f"{role} has no port named {SERVE_PORT_NAME!r} for the policy to open"
        if role == "head":
            assert {name: port for name, port in HEAD_PORTS} == {k: v for k, v in ports.items() if k != SERVE_PORT_NAME}
            assert {6379, 8265, 10001} <= set(ports.values())
        assert template["metadata"]["labels"][naming.LABEL_MODEL_DEPLOYMENT]


# ------------------------------------------------------------ NOTES, dependency, install.yaml

def test_notes_tell_the_next_command(default_render, custom_render):
    _, notes = default_render
    assert "kubectl apply -f manifests/examples/tiny-cpu.yaml" in notes
    assert "kubectl wait md/tiny --for=condition=Ready" in notes
    assert "kuberay-operator.enabled=true" in notes
    assert "every namespace" in notes
    _, custom_notes = custom_render
    assert "team-a, team-b" in custom_notes and "kuberay-operator.enabled=true" not in custom_notes


def test_kuberay_dependency_is_optional_and_off_by_default():
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    (dependency,) = chart["dependencies"]
    assert dependency["name"] == "kuberay-operator"
    assert dependency["condition"] == "kuberay-operator.enabled"
    assert dependency["repository"].startswith("https://")
    # review #7: rayClusterConfig.authOptions (Ray token auth) exists from KubeRay 1.5.1 on.
    assert dependency["version"] == f">={MIN_KUBERAY_VERSION_TEXT}"
    assert yaml.safe_load((CHART / "values.yaml").read_text())["kuberay-operator"] == {"enabled": False}


def test_install_yaml_is_the_chart_rendered_with_defaults():
    assert INSTALL_YAML.is_file(), "run: python -m tests.cluster.chart --write"
    assert INSTALL_YAML.read_text() == render_install_yaml(), (
        "manifests/install.yaml is stale; run: python -m tests.cluster.chart --write")
    objects = [doc for doc in yaml.safe_load_all(INSTALL_YAML.read_text()) if doc]
    assert [o["kind"] for o in objects[:2]] == ["Namespace", "CustomResourceDefinition"]
    assert objects[1] == build_crd()
    for obj in objects:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def test_manifests_crds_and_examples_are_the_only_manifests():
    found = sorted(str(p.relative_to(ROOT / "manifests")) for p in (ROOT / "manifests").rglob("*.yaml"))
    assert "install.yaml" in found and "crds/shardserve.dev_modeldeployments.yaml" in found
    assert all(p.startswith(("crds/", "examples/")) or p == "install.yaml" for p in found), found


def test_chart_files_parse():
    for path in (CHART / "Chart.yaml", CHART / "values.yaml"):
        assert isinstance(yaml.safe_load(path.read_text()), dict)
    assert Path(CHART / "templates" / "NOTES.txt").is_file()
