"""The chart's RBAC is exactly what the operator uses.

The real operator (kopf, the official client, leader election on) runs
against the stateful API server of the operator suite through a full life:
create with an Ingress, a spec change that touches every child, KubeRay's
RayCluster appearing and the replica count changing (its worker bounds are
patched), the model moving to a pvc:// claim, a child deleted by hand, the
Ingress removed, a pause (the RayService deleted), shutdown. Every request it sends is
turned into an RBAC check (group, resource, verb, namespace, name) and must
be allowed by the Roles the chart renders for the same settings; every verb
the chart grants must have been used, or be one the API server checks
without a request of its own (each such grant is verified below).
"""

from __future__ import annotations

import inspect
import sys
from pathlib import Path
from typing import Any, NamedTuple, Optional

import aiohttp
import attrs
import kmock
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "operator"))

from cluster_emulator import ClusterEmulator  # noqa: E402
from operator_harness import (  # noqa: E402
    MD_PATH,
    RS_PATH,
    SVC_PATH,
    Cluster,
    eventually,
    operator_settings,
    start_operator,
    tiny_document,
)
from shardserve.api.kuberay import build_cluster_labels  # noqa: E402
from shardserve_operator import naming  # noqa: E402
from shardserve_operator.main import build_kopf_settings  # noqa: E402
from shardserve_operator.settings import LeaderElection  # noqa: E402
from tests.cluster.chart import NAMESPACE, render_chart  # noqa: E402

TEST_HEADER = "X-Shardserve-Test"
RAYCLUSTER_PATH = "/apis/ray.io/v1/namespaces/{ns}/rayclusters"
PVC_PATH = "/api/v1/namespaces/{ns}/persistentvolumeclaims"
POD_NAME = "shardserve-abc12"


class Access(NamedTuple):
    group: str
    resource: str  # plural, or plural/subresource
    verb: str
    namespace: Optional[str]  # None: cluster-wide
    name: Optional[str]


@attrs.define(kw_only=True)
class RecordingEmulator(ClusterEmulator):
    """Records every request but the test's own, before the emulator serves it."""

    seen: list[tuple[str, str, bool]] = attrs.field(factory=list, init=False)

    async def __call__(self, raw_request):
        if TEST_HEADER not in raw_request.headers:
            self.seen.append((raw_request.method, raw_request.path, raw_request.query.get("watch") == "true"))
        return await super().__call__(raw_request)


def access_of(method: str, path: str, watch: bool) -> Optional[Access]:
    """An API request as the authorizer sees it; None for discovery (allowed to everyone)."""
    parts = path.strip("/").split("/")
    if parts[0] == "api":
        group, rest = "", parts[2:]
    elif parts[0] == "apis" and len(parts) >= 3:
        group, rest = parts[1], parts[3:]
    else:
        return None
    if not rest:
        return None
    namespace = None
    if rest[0] == "namespaces" and len(rest) >= 3:
        namespace, rest = rest[1], rest[2:]
    resource, name = rest[0], (rest[1] if len(rest) > 1 else None)
    if len(rest) > 2:
        resource += "/" + rest[2]
    verb = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}.get(method)
    if verb is None:
        verb = "get" if name else ("watch" if watch else "list")
    return Access(group, resource, verb, namespace, name)


def _allows(rule: dict[str, Any], access: Access) -> bool:
    if access.group not in rule["apiGroups"] or access.resource not in rule["resources"]:
        return False
    if access.verb not in rule["verbs"]:
        return False
    names = rule.get("resourceNames")
    return not names or (access.name in names and access.verb != "create")


def allowed(objects: list[dict[str, Any]], access: Access) -> bool:
    """RBAC's answer for the chart's ServiceAccount (the chart binds only its own roles to it)."""
    cluster_roles = {o["metadata"]["name"]: o for o in objects if o["kind"] == "ClusterRole"}
    roles = {(o["metadata"]["namespace"], o["metadata"]["name"]): o for o in objects if o["kind"] == "Role"}
    for binding in objects:
        if binding["kind"] == "ClusterRoleBinding":
            rules = cluster_roles[binding["roleRef"]["name"]]["rules"]
        elif binding["kind"] == "RoleBinding" and binding["metadata"]["namespace"] == access.namespace:
            ref = binding["roleRef"]
            role = roles.get((access.namespace, ref["name"])) if ref["kind"] == "Role" else cluster_roles[ref["name"]]
            rules = role["rules"]
        else:
            continue
        if any(_allows(rule, access) for rule in rules):
            return True
    return False


def granted(objects: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    return {(group, resource, verb)
            for o in objects if o["kind"] in ("ClusterRole", "Role")
            for rule in o["rules"] for group in rule["apiGroups"]
            for resource in rule["resources"] for verb in rule["verbs"]}


def _blocks_owner_deletion() -> bool:
    return naming.build_owner_reference("x", "uid")["blockOwnerDeletion"] is True


def _kopf_watches_crds(settings) -> bool:
    from kopf._core.reactor import observation

    return (not build_kopf_settings(settings).scanning.disabled
            and "references.CRDS" in inspect.getsource(observation.resource_observer))


# Grants the API server checks without a request of their own; each with the check that it is still needed.
IMPLIED = {
    # Setting ownerReferences[].blockOwnerDeletion (naming.build_owner_reference) needs
    # update on the owner's finalizers (OwnerReferencesPermissionEnforcement).
    ("shardserve.dev", "modeldeployments/finalizers", "update"): lambda settings: _blocks_owner_deletion(),
    # kopf's resource observer watches CRDs unless scanning is disabled; the
    # emulator serves no CRDs, so kopf waits there instead of watching.
    ("apiextensions.k8s.io", "customresourcedefinitions", "list"): _kopf_watches_crds,
    ("apiextensions.k8s.io", "customresourcedefinitions", "watch"): _kopf_watches_crds,
}


async def run_operator_life(namespaces: tuple[str, ...]) -> tuple[list[Access], Any]:
    """Drives the operator through create/update/child-deleted/ingress-removed/stop; returns its accesses."""
    ns = "team-a"
    async with RecordingEmulator() as emulator, kmock.Server(emulator) as server:
        emulator.declare_resources()
        url = str(server.url).rstrip("/")
        async with aiohttp.ClientSession(headers={TEST_HEADER: "1"}) as session:
            cluster = Cluster(emulator, url, session)
            lease = LeaderElection(enabled=True, lease_name="shardserve", lease_namespace=NAMESPACE, identity=POD_NAME,
                                   lease_duration_seconds=2, renew_deadline_seconds=1.5, retry_period_seconds=0.2)
            settings = operator_settings(url, namespaces=namespaces, leader_election=lease)
            running = await start_operator(settings)
            try:
                doc = tiny_document(namespace=ns, ingress={"host": "tiny.example.com", "className": "nginx"})
                await cluster.create_md(doc)
                await eventually(lambda: cluster.ingress("tiny", ns) and cluster.condition("tiny", "Ready", ns),
                                 15, "children and status")
                md_path = MD_PATH.format(ns=ns) + "/tiny"
                await cluster.patch(md_path, {"spec": {"serving": {"port": 8001},
                                                       "ingress": {"host": "llm.example.com"}}})
                await eventually(lambda: cluster.service("tiny", ns)["spec"]["ports"][0]["port"] == 8001
                                 and cluster.ingress("tiny", ns)["spec"]["rules"][0]["host"] == "llm.example.com",
                                 15, "children updated")
                # KubeRay runs a RayCluster for the RayService; a new replica count reaches it only
                # through the operator's patch (review #2).
                rayservice = cluster.rayservice("tiny", ns)
                raycluster = {
                    "apiVersion": "ray.io/v1", "kind": "RayCluster",
                    "metadata": {"name": "tiny-abcde", "namespace": ns, "labels": build_cluster_labels(rayservice),
                                 "ownerReferences": [{"apiVersion": "ray.io/v1", "kind": "RayService", "name": "tiny",
                                                      "uid": rayservice["metadata"]["uid"], "controller": True}]},
                    "spec": rayservice["spec"]["rayClusterConfig"],
                }
                await cluster.create(RAYCLUSTER_PATH.format(ns=ns), raycluster)
                await cluster.patch(RS_PATH.format(ns=ns) + "/tiny/status",
                                    {"status": {"activeServiceStatus": {"rayClusterName": "tiny-abcde"}}})
                await cluster.patch(md_path, {"spec": {"replicas": 2}})
                await eventually(lambda: emulator.get("ray.io/v1/rayclusters", ns, "tiny-abcde")["spec"]
                                 ["workerGroupSpecs"][0]["maxReplicas"] == 2, 15, "RayCluster bounds patched")
                # The model on a claim the operator reads (review #11).
                await cluster.create(PVC_PATH.format(ns=ns), {
                    "apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "models"},
                    "spec": {"accessModes": ["ReadOnlyMany"], "resources": {"requests": {"storage": "1Gi"}}}})
                await cluster.patch(md_path, {"spec": {"model": {"source": "pvc://models/tiny"}}})
                await eventually(lambda: "models" in str(cluster.rayservice("tiny", ns)["spec"]), 15,
                                 "the claim mounted")
                old = cluster.service("tiny", ns)["metadata"]["uid"]
                status, _ = await cluster.request("DELETE", SVC_PATH.format(ns=ns) + "/tiny")
                assert status == 200
                await eventually(lambda: (cluster.service("tiny", ns) or {}).get("metadata", {}).get("uid")
                                 not in (None, old), 15, "Service recreated")
                await cluster.patch(md_path, {"spec": {"ingress": None}})
                await eventually(lambda: cluster.ingress("tiny", ns) is None, 15, "Ingress deleted")
                # replicas: 0 pauses: the RayService (and with it every Ray pod) goes (review #6).
                await cluster.patch(md_path, {"spec": {"replicas": 0}})
                await eventually(lambda: cluster.rayservice("tiny", ns) is None, 15, "RayService deleted")
                await eventually(lambda: any(a.resource == "leases" and a.verb == "update"
                                             for a in (access_of(*s) for s in emulator.seen) if a),
                                 10, "a Lease renewal")
            finally:
                assert await running.stop() == 0
            accesses = [a for a in (access_of(*seen) for seen in emulator.seen) if a is not None]
            return accesses, settings


@pytest.mark.asyncio
@pytest.mark.parametrize("watch", [(), ("team-a",)], ids=["all-namespaces", "watch-team-a"])
async def test_chart_rbac_is_exactly_what_the_operator_uses(watch):
    accesses, settings = await run_operator_life(watch)
    objects, _ = render_chart({"watchNamespaces": list(watch)})

    denied = sorted({a for a in accesses if not allowed(objects, a)})
    assert denied == [], f"the operator made requests the chart's RBAC forbids: {denied}"

    used = {(a.group, a.resource, a.verb) for a in accesses}
    implied = {grant for grant, still_needed in IMPLIED.items() if still_needed(settings)}
    unused = sorted(granted(objects) - used - implied)
    assert unused == [], f"the chart grants what the operator never uses: {unused}"
    # The life above exercises the operator fully: nothing implied was also requested.
    assert not implied & used


@pytest.mark.asyncio
async def test_a_missing_grant_is_caught():
    accesses, _ = await run_operator_life(())
    objects, _ = render_chart()
    for obj in objects:
        if obj["kind"] == "ClusterRole":
            for rule in obj["rules"]:
                if "ingresses" in rule["resources"]:
                    rule["verbs"] = [v for v in rule["verbs"] if v != "delete"]
    assert any(not allowed(objects, a) and a.resource == "ingresses" and a.verb == "delete" for a in accesses)


def test_access_mapping():
    assert access_of("GET", "/apis/ray.io/v1/namespaces/a/rayservices", True) == \
        Access("ray.io", "rayservices", "watch", "a", None)
    assert access_of("GET", "/apis/ray.io/v1/rayservices", False) == Access("ray.io", "rayservices", "list", None, None)
    assert access_of("PATCH", "/apis/shardserve.dev/v1alpha1/namespaces/a/modeldeployments/x/status", False) == \
        Access("shardserve.dev", "modeldeployments/status", "patch", "a", "x")
    assert access_of("GET", "/api/v1/namespaces", True) == Access("", "namespaces", "watch", None, None)
    assert access_of("POST", "/api/v1/namespaces/a/events", False) == Access("", "events", "create", "a", None)
    assert access_of("GET", "/apis", False) is None and access_of("GET", "/api/v1", False) is None
