"""The operator against what a real KubeRay does, played by the test on the emulated API server.

KubeRay cannot run here, so the test writes what it would: the RayClusters
it creates for a RayService (labels copied, the RayService as controller),
the RayService's status (observedGeneration, active and pending clusters,
UpgradeInProgress), the RayCluster's own status, an older RayService CRD,
and the API server's refusal of an unknown field under strict validation.
"""

from __future__ import annotations

import asyncio
import copy
import logging

import kmock
import pytest

from operator_harness import MD_PATH, RS_PATH, eventually, operator_settings, start_operator, tiny_document
from shardserve.api.kuberay import MIN_KUBERAY_VERSION_TEXT, build_cluster_labels
from shardserve_operator.controller import Controller
from shardserve_operator.kube import Kube, build_api_client
from test_operator_integration import converged, ready_status, settled

pytestmark = pytest.mark.asyncio

RC = "ray.io/v1/rayclusters"
RC_PATH = "/apis/ray.io/v1/namespaces/{ns}/rayclusters"
PVC_PATH = "/api/v1/namespaces/{ns}/persistentvolumeclaims"
MD = MD_PATH.format(ns="default") + "/tiny"
RS_STATUS = RS_PATH.format(ns="default") + "/tiny/status"
AUTH_OPTIONS = 'unknown field "spec.rayClusterConfig.authOptions"'
STRICT_REFUSAL = f'RayService in version "v1" cannot be handled as a RayService: strict decoding error: {AUTH_OPTIONS}'


async def kuberay_creates_cluster(cluster, name: str, ns: str = "default", status=None) -> dict:
    """A RayCluster as KubeRay's constructRayClusterForRayService makes it from the RayService as it is now."""
    rayservice = cluster.rayservice("tiny", ns)
    body = {
        "apiVersion": "ray.io/v1", "kind": "RayCluster",
        "metadata": {"name": name, "labels": build_cluster_labels(rayservice),
                     "annotations": dict(rayservice["metadata"].get("annotations") or {}),
                     "ownerReferences": [{"apiVersion": "ray.io/v1", "kind": "RayService", "name": "tiny",
                                          "uid": rayservice["metadata"]["uid"], "controller": True,
                                          "blockOwnerDeletion": True}]},
        "spec": copy.deepcopy(rayservice["spec"]["rayClusterConfig"]),
    }
    created = await cluster.create(RC_PATH.format(ns=ns), body)
    if status is not None:
        created = await cluster.patch(RC_PATH.format(ns=ns) + f"/{name}/status", {"status": status})
    return created


def workers(cluster, name: str, ns: str = "default") -> tuple:
    group = cluster.emulator.get(RC, ns, name)["spec"]["workerGroupSpecs"][0]
    return group.get("replicas"), group.get("minReplicas"), group.get("maxReplicas")


def condition(cluster, type_: str) -> tuple:
    found = cluster.condition("tiny", type_) or {}
    return found.get("status"), found.get("reason")


def upgrading(active: str, pending: str, observed: int) -> dict:
    """KubeRay's RayService status during a NewCluster upgrade: Ready stays True from the old cluster."""
    status = ready_status(cluster=active)
    status["observedGeneration"] = observed
    status["conditions"].append({"type": "UpgradeInProgress", "status": "True",
                                 "reason": "BothActivePendingClustersExist", "message": "",
                                 "lastTransitionTime": "2026-01-01T00:00:00Z"})
    status["pendingServiceStatus"] = {"rayClusterName": pending}
    return status


async def test_a_scale_reaches_the_active_and_pending_rayclusters(cluster, operator):
    """review #2: KubeRay's hash ignores min/maxReplicas, so the operator patches both RayClusters."""
    await cluster.create_md(tiny_document())
    await converged(cluster)
    await kuberay_creates_cluster(cluster, "tiny-old")
    await kuberay_creates_cluster(cluster, "tiny-new")
    await cluster.patch(RS_STATUS, {"status": upgrading("tiny-old", "tiny-new", observed=1)})
    await settled(cluster)
    assert workers(cluster, "tiny-old") == workers(cluster, "tiny-new") == (1, 1, 1)
    mark = len(cluster.emulator.requests)

    await cluster.patch(MD, {"spec": {"replicas": 3}})  # what kubectl scale does through /scale
    await eventually(lambda: workers(cluster, "tiny-old") == workers(cluster, "tiny-new") == (3, 3, 3), 10,
                     "both RayClusters at 3 workers")
    patches = [r for r in cluster.emulator.requests[mark:]
               if r.method.value == "PATCH" and "/rayclusters/" in r.url.path]
    assert sorted(r.url.path.rsplit("/", 1)[1] for r in patches) == ["tiny-new", "tiny-old"]
    for request in patches:
        assert request.headers.get("Content-Type", "").startswith("application/json-patch+json")
        assert request.params.get("fieldValidation") == "Strict"
        assert request.data[0] == {"op": "test", "path": "/spec/workerGroupSpecs/0/groupName", "value": "workers"}

    # Autoscaling bounds reach them too; the autoscaler's count inside them is left alone.
    await cluster.patch(MD, {"spec": {"replicas": None, "autoscaling": {"minReplicas": 1, "maxReplicas": 4}}})
    await eventually(lambda: workers(cluster, "tiny-old") == workers(cluster, "tiny-new") == (3, 1, 4), 10,
                     "autoscaling bounds")
    # Once written, nothing more is written to them.
    await settled(cluster)
    mark = len(cluster.emulator.requests)
    await cluster.patch(RS_STATUS, {"status": {"lastUpdateTime": "2026-01-01T00:09:00Z"}})
    await settled(cluster)
    assert not [w for w in cluster.emulator.writes(mark) if "/rayclusters/" in w]


async def test_a_raycluster_of_someone_else_is_not_touched(cluster, operator):
    """review #2: only clusters the RayService controls and that carry the ModelDeployment's label."""
    await cluster.create_md(tiny_document())
    await converged(cluster)
    stranger = await kuberay_creates_cluster(cluster, "tiny-abcde")
    await cluster.patch(RC_PATH.format(ns="default") + "/tiny-abcde",
                        {"metadata": {"ownerReferences": [{**stranger["metadata"]["ownerReferences"][0],
                                                           "uid": "another-rayservice"}]}})
    await cluster.patch(RS_STATUS, {"status": ready_status(cluster="tiny-abcde")})
    await cluster.patch(MD, {"spec": {"replicas": 2}})
    await converged(cluster, generation=2)
    await settled(cluster)
    assert workers(cluster, "tiny-abcde") == (1, 1, 1)


async def test_ready_replicas_follow_the_rayclusters_own_status(cluster, operator):
    """review #9: KubeRay does not refresh rayClusterStatus in the RayService; the RayCluster's watch does."""
    await cluster.create_md(tiny_document(replicas=2))
    await converged(cluster)
    await kuberay_creates_cluster(cluster, "tiny-abcde", status={"desiredWorkerReplicas": 2})
    status = ready_status()
    status["activeServiceStatus"]["applicationStatuses"]["tiny"]["serveDeploymentStatuses"]["llm"]["status"] = \
        "UPSCALING"  # Serve is still starting the second replica
    status["activeServiceStatus"]["rayClusterStatus"] = {"desiredWorkerReplicas": 2}  # never refreshed
    await cluster.patch(RS_STATUS, {"status": status})
    await eventually(lambda: cluster.condition("tiny", "Ready")["status"] == "True", 10, "Ready")
    assert cluster.md("tiny")["status"]["readyReplicas"] == 0
    reconciles = operator.controller.reconciles

    # Only the RayCluster's status changes, as when a worker pod turns Ready.
    for ready in (1, 2):
        await cluster.patch(RC_PATH.format(ns="default") + "/tiny-abcde/status",
                            {"status": {"desiredWorkerReplicas": 2, "readyWorkerReplicas": ready}})
        # awaited here: the lambda never outlives this iteration
        await eventually(lambda: cluster.md("tiny")["status"]["readyReplicas"] == ready, 10,  # noqa: B023
                         f"readyReplicas {ready}")
    assert operator.controller.reconciles >= reconciles + 2
    assert cluster.md("tiny")["status"]["replicas"] == 2


async def test_ready_stays_false_while_kuberay_has_not_rolled_out_the_generation(cluster, operator):
    """review #8: Ready at generation N only once KubeRay observed N and no upgrade is under way."""
    await cluster.create_md(tiny_document())
    await converged(cluster)
    await cluster.patch(RS_STATUS, {"status": ready_status(cluster="tiny-old")})
    await eventually(lambda: condition(cluster, "Ready") == ("True", "Serving"), 10, "Ready")

    # A spec change that needs a new RayCluster: the RayService is replaced (generation 2).
    await cluster.patch(MD, {"spec": {"resources": {"memory": "5Gi"}}})
    await converged(cluster, generation=2)
    assert cluster.rayservice("tiny")["metadata"]["generation"] == 2
    assert condition(cluster, "ServeReady") == ("True", "ServeRunning")  # the old cluster serves
    assert condition(cluster, "Progressing") == ("True", "WaitingForKubeRay")
    assert condition(cluster, "Ready") == ("False", "RollingOut")
    assert "the previous generation still serves" in cluster.condition("tiny", "Ready")["message"]
    await settled(cluster)
    assert condition(cluster, "Ready") == ("False", "RollingOut")

    # KubeRay saw it and starts a second cluster; Ready stays False (KubeRay's own Ready stays True).
    await cluster.patch(RS_STATUS, {"status": upgrading("tiny-old", "tiny-new", observed=2)})
    await eventually(lambda: condition(cluster, "Progressing") == ("True", "UpgradeInProgress"), 10, "upgrade")
    assert condition(cluster, "Ready") == ("False", "RollingOut")
    assert "RayCluster tiny-old still serves" in cluster.condition("tiny", "Progressing")["message"]

    # The switch: the new cluster is active, no pending one, no upgrade.
    done = ready_status(cluster="tiny-new")
    done["observedGeneration"] = 2
    done["conditions"].append({"type": "UpgradeInProgress", "status": "False", "reason": "NoPendingCluster",
                               "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"})
    await cluster.patch(RS_STATUS, {"status": {**done, "pendingServiceStatus": None}})
    await eventually(lambda: condition(cluster, "Ready") == ("True", "Serving"), 10, "Ready at generation 2")
    assert condition(cluster, "Progressing") == ("False", "RolledOut")
    assert all(c["observedGeneration"] == 2 for c in cluster.md("tiny")["status"]["conditions"])
    assert not [e for e in cluster.events() if e["reason"] == "RollingOut" and e["type"] == "Warning"]


async def test_strict_validation_refusal_becomes_kuberay_unsupported(cluster, operator, caplog):
    """review #7: an older CRD refuses authOptions under fieldValidation=Strict instead of pruning it."""
    fault = cluster.emulator.inject("POST", r"/rayservices$", 400, times=1000, message=STRICT_REFUSAL)
    with caplog.at_level(logging.ERROR, logger="shardserve_operator"):
        await cluster.create_md(tiny_document())
        await eventually(lambda: condition(cluster, "ResourcesApplied") == ("False", "KubeRayUnsupported"), 10,
                         "KubeRayUnsupported")
    message = cluster.condition("tiny", "ResourcesApplied")["message"]
    assert "spec.rayClusterConfig.authOptions" in message and f"KubeRay >= {MIN_KUBERAY_VERSION_TEXT}" in message
    assert cluster.rayservice("tiny") is None
    assert condition(cluster, "Ready") == ("False", "ResourcesNotApplied")
    assert any(r.levelno == logging.ERROR and "authOptions" in r.getMessage() for r in caplog.records)
    await eventually(lambda: any(e["reason"] == "KubeRayUnsupported" and e["type"] == "Warning"
                                 for e in cluster.events()), 10, "a Warning event")
    # KubeRay upgraded: the next look applies it, without a new spec.
    fault.times = fault.hits
    await eventually(lambda: cluster.rayservice("tiny") is not None, 10, "applied after the upgrade")
    await eventually(lambda: condition(cluster, "ResourcesApplied") == ("True", "Applied"), 10, "Applied")
    # Every write of a child asked for strict validation.
    child_writes = [r for r in cluster.emulator.requests if r.method.value in ("POST", "PUT")
                    and any(p in r.url.path for p in ("/rayservices", "/services", "/ingresses"))]
    assert child_writes and all(r.params.get("fieldValidation") == "Strict" for r in child_writes)


def _crd_without(field: str) -> dict:
    group = {"type": "object", "properties": {"resources": {"type": "object"}}}
    cluster_config = {"type": "object", "properties": {"authOptions": {"type": "object"},
                                                       "workerGroupSpecs": {"type": "array", "items": group}}}
    del cluster_config["properties"][field]
    spec = {"type": "object", "properties": {"rayClusterConfig": cluster_config,
                                             "rayClusterDeletionDelaySeconds": {"type": "integer"}}}
    return {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": "rayservices.ray.io"},
            "spec": {"group": "ray.io", "names": {"kind": "RayService", "plural": "rayservices"},
                     "scope": "Namespaced",
                     "versions": [{"name": "v1", "served": True, "storage": True,
                                   "schema": {"openAPIV3Schema": {"type": "object",
                                                                  "properties": {"spec": spec}}}}]}}


async def test_an_old_rayservice_crd_holds_every_write_back(cluster):
    """review #7: read at start-up; while it lacks a field the render uses, no child is written."""
    crds = kmock.resource("apiextensions.k8s.io/v1/customresourcedefinitions")
    cluster.emulator.objects[crds, None, "rayservices.ray.io"] = _crd_without("authOptions")
    running = await start_operator(operator_settings(cluster.url))
    try:
        assert running.controller.kuberay_missing == ("spec.rayClusterConfig.authOptions",)
        await cluster.create_md(tiny_document())
        await eventually(lambda: condition(cluster, "ResourcesApplied") == ("False", "KubeRayUnsupported"), 10,
                         "KubeRayUnsupported")
        assert "lacks spec.rayClusterConfig.authOptions" in cluster.condition("tiny", "ResourcesApplied")["message"]
        # It looks again on every retry (a GET of the CRD), and still writes nothing.
        await eventually(lambda: running.controller.reconciles >= 3, 10, "retries")
        assert cluster.rayservice("tiny") is None and cluster.service("tiny") is None
        assert not [w for w in cluster.emulator.writes() if "/modeldeployments" not in w and "/events" not in w]
        # KubeRay and its CRD upgraded: the operator applies on its next look.
        cluster.emulator.objects[crds, None, "rayservices.ray.io"] = _full_crd()
        await eventually(lambda: cluster.rayservice("tiny") is not None, 10, "applied after the upgrade")
        await eventually(lambda: condition(cluster, "ResourcesApplied") == ("True", "Applied"), 10, "Applied")
        assert running.controller.kuberay_missing == ()
    finally:
        assert await running.stop() == 0


def _full_crd() -> dict:
    crd = _crd_without("authOptions")
    cluster_config = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"][
        "rayClusterConfig"]
    cluster_config["properties"]["authOptions"] = {"type": "object"}
    return crd


async def test_a_conflict_on_replace_is_retried_at_once(cluster, operator):
    """review #23: KubeRay's status writes bump the resourceVersion; one 409 costs a read, not a backoff."""
    await cluster.create_md(tiny_document())
    await converged(cluster)
    await settled(cluster)
    put = cluster.emulator.inject("PUT", r"/rayservices/tiny$", 409)
    mark = len(cluster.emulator.requests)
    reconciles = operator.controller.reconciles
    await cluster.patch(MD, {"spec": {"serving": {"maxOngoingRequests": 8}}})
    await converged(cluster, generation=2)
    await settled(cluster)
    assert put.hits == 1
    path = RS_PATH.format(ns="default") + "/tiny"
    calls = [c.split()[0] for c in cluster.emulator.calls(mark) if c.endswith(path)]
    assert calls == ["GET", "PUT", "GET", "PUT"]  # observe, 409, a fresh read, the replace
    assert operator.controller.reconciles == reconciles + 1  # within the one reconcile
    assert "maxOngoingRequests: 8" in cluster.rayservice("tiny")["spec"]["serveConfigV2"]


async def test_a_missing_claim_holds_back_and_a_readwriteonce_claim_warns(cluster, operator):
    """review #11: ClaimNotFound applies nothing; a ReadWriteOnce claim is applied with a warning."""
    doc = tiny_document()
    doc["spec"]["model"]["source"] = "pvc://weights/tiny"
    await cluster.create_md(doc)
    await eventually(lambda: condition(cluster, "ResourcesApplied") == ("False", "ClaimNotFound"), 10,
                     "ClaimNotFound")
    assert "PersistentVolumeClaim default/weights" in cluster.condition("tiny", "ResourcesApplied")["message"]
    assert cluster.rayservice("tiny") is None

    await cluster.create(PVC_PATH.format(ns="default"), {
        "apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "weights"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}})
    await eventually(lambda: condition(cluster, "ResourcesApplied") == ("True", "Applied"), 10, "applied")
    assert cluster.rayservice("tiny") is not None
    assert "offers ReadWriteOnce" in cluster.condition("tiny", "ResourcesApplied")["message"]
    warned = lambda: [e for e in cluster.events() if e["reason"] == "ClaimNotShareable"]  # noqa: E731
    await eventually(lambda: len(warned()) == 1, 10, "a ClaimNotShareable Warning")
    assert warned()[0]["type"] == "Warning"
    # Later reconciles do not post it again.
    await cluster.patch(MD, {"spec": {"serving": {"maxOngoingRequests": 8}}})
    await converged(cluster, generation=2)
    await settled(cluster)
    assert len(warned()) == 1


async def test_replicas_zero_pauses_and_says_so(cluster, operator):
    """spec.replicas 0 renders no RayService: it is deleted, and status says Paused."""
    await cluster.create_md(tiny_document())
    await converged(cluster)
    await cluster.patch(RS_STATUS, {"status": ready_status()})
    await eventually(lambda: condition(cluster, "Ready") == ("True", "Serving"), 10, "Ready")
    await cluster.patch(MD, {"spec": {"replicas": 0}})
    await eventually(lambda: cluster.rayservice("tiny") is None, 10, "RayService deleted")
    await converged(cluster, generation=2)
    assert condition(cluster, "ServeReady") == ("False", "Paused")
    assert condition(cluster, "Ready") == ("False", "Paused")
    assert condition(cluster, "Progressing") == ("False", "Paused")
    status = cluster.md("tiny")["status"]
    assert (status["replicas"], status["readyReplicas"]) == (0, 0)
    assert cluster.service("tiny") is not None  # clients keep the name
    await cluster.patch(MD, {"spec": {"replicas": 1}})
    await eventually(lambda: cluster.rayservice("tiny") is not None, 10, "started again")
    await asyncio.sleep(0)


async def test_an_unreadable_rayservice_crd_is_logged_in_the_servers_words(cluster, caplog):
    """No RBAC to read CRDs leaves strict validation as the check; the log says what the API server said."""
    cluster.emulator.inject("GET", r"/customresourcedefinitions/rayservices.ray.io$", 403, message="rbac says no")
    controller = Controller(Kube(build_api_client(cluster.url)), operator_settings(cluster.url))
    with caplog.at_level(logging.WARNING, logger="shardserve_operator"):
        assert await asyncio.to_thread(controller.check_kuberay) == ()
    assert ("could not read the RayService CRD (GET /apis/apiextensions.k8s.io/v1/customresourcedefinitions/"
            "rayservices.ray.io: HTTP 403 Forbidden: rbac says no)") in caplog.text
