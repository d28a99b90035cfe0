"""The real operator (kopf, the official client) against a stateful API server on 127.0.0.1.

Each test starts its own API server (cluster_emulator) and operator, and
stops both. Nothing here needs Ray, vLLM or a cluster.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timedelta

import pytest

from operator_harness import (
    ING_PATH,
    MD_PATH,
    RS_PATH,
    SVC_PATH,
    eventually,
    kopf_is_done,
    operator_settings,
    start_operator,
    tiny_document,
)
from shardserve.api.validation import parse_deployment
from shardserve_operator import naming
from shardserve_operator.hashing import read_hash
from shardserve_operator.render import render_children
from shardserve_operator.status import CONDITION_TYPES

pytestmark = pytest.mark.asyncio

RS = "ray.io/v1/rayservices"


def ready_status(app="RUNNING", ready="True", cluster="tiny-abcde", endpoints=1, reason="NonZeroServeEndpoints"):
    """The RayService status KubeRay writes once Serve runs the application."""
    return {
        "conditions": [{"type": "Ready", "status": ready, "reason": reason, "message": "",
                        "lastTransitionTime": "2026-01-01T00:00:00Z"}],
        "serviceStatus": "Running" if ready == "True" else "",
        "numServeEndpoints": endpoints,
        "observedGeneration": 1,
        "activeServiceStatus": {
            "rayClusterName": cluster,
            "applicationStatuses": {"tiny": {"status": app, "serveDeploymentStatuses": {
                "llm": {"status": "HEALTHY" if app == "RUNNING" else "UPDATING"},
                "ingress": {"status": "HEALTHY"}}}},
            "rayClusterStatus": {"desiredWorkerReplicas": 1, "readyWorkerReplicas": 1},
        },
    }


async def converged(cluster, name="tiny", generation=1, ns="default"):
    """Waits until the ModelDeployment's status reflects `generation`."""
    def check():
        status = (cluster.md(name, ns) or {}).get("status") or {}
        return status.get("observedGeneration") == generation and len(status.get("conditions", [])) == len(CONDITION_TYPES)
    await eventually(check, 10, f"status of {name} at generation {generation}")


async def settled(cluster, quiet=0.3, timeout=10.0):
    """Waits until no request has reached the API server for `quiet` seconds."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        before = len(cluster.emulator.calls())
        await asyncio.sleep(quiet)
        if len(cluster.emulator.calls()) == before:
            return
    pytest.fail("the operator kept calling the API server")


async def test_create_applies_children_with_owner_references(cluster, operator):
    started = time.monotonic()
    created = await cluster.create_md(tiny_document())
    took = await eventually(lambda: cluster.rayservice("tiny") and cluster.service("tiny"), 10, "children")
    uid = created["metadata"]["uid"]
    owner = naming.build_owner_reference("tiny", uid)
    rayservice, service = cluster.rayservice("tiny"), cluster.service("tiny")
    assert rayservice["metadata"]["ownerReferences"] == [owner]
    assert service["metadata"]["ownerReferences"] == [owner]
    assert cluster.ingress("tiny") is None
    expected = {o["kind"]: o for o in render_children(parse_deployment(created), operator.operator.settings.render,
                                                      owner_uid=uid)}
    assert rayservice["spec"] == expected["RayService"]["spec"]
    assert service["spec"] == expected["Service"]["spec"]
    assert read_hash(rayservice) == read_hash(expected["RayService"])
    await converged(cluster)
    assert cluster.condition("tiny", "ResourcesApplied")["status"] == "True"
    assert cluster.condition("tiny", "Ready")["reason"] == "ServeNotReady"
    status = cluster.md("tiny")["status"]
    assert status["endpoint"] == "http://tiny.default.svc:8000/v1"
    assert status["selector"] == "shardserve.dev/model-deployment=tiny,ray.io/node-type=worker"
    await eventually(lambda: {e["reason"] for e in cluster.events()} >= {"SpecAccepted", "Applied"}, 10, "events")
    print(f"\ncreate -> children applied: {took * 1000:.0f} ms (POST to both children seen: "
          f"{(time.monotonic() - started) * 1000:.0f} ms incl. status)")
    assert took < 5


async def test_spec_change_updates_children(cluster, operator):
    await cluster.create_md(tiny_document())
    await converged(cluster)
    service_before = cluster.service("tiny")
    await cluster.patch(MD_PATH.format(ns="default") + "/tiny",
                        {"spec": {"replicas": 3, "serving": {"maxOngoingRequests": 16}}})
    await converged(cluster, generation=2)
    group = cluster.rayservice("tiny")["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]
    assert (group["replicas"], group["minReplicas"], group["maxReplicas"]) == (3, 3, 3)
    assert "maxOngoingRequests: 16" in cluster.rayservice("tiny")["spec"]["serveConfigV2"]
    assert cluster.md("tiny")["status"]["replicas"] == 3
    assert cluster.service("tiny")["metadata"]["resourceVersion"] == service_before["metadata"]["resourceVersion"]
    assert all(c["observedGeneration"] == 2 for c in cluster.md("tiny")["status"]["conditions"])


async def test_removing_spec_ingress_deletes_the_ingress(cluster, operator):
    doc = tiny_document(ingress={"host": "tiny.example.com", "className": "nginx"})
    created = await cluster.create_md(doc)
    await eventually(lambda: cluster.ingress("tiny"), 10, "Ingress")
    assert naming.is_controlled_by(cluster.ingress("tiny"), created["metadata"]["uid"])
    await converged(cluster)
    await cluster.patch(MD_PATH.format(ns="default") + "/tiny", {"spec": {"ingress": None}})
    await eventually(lambda: cluster.ingress("tiny") is None, 10, "Ingress deleted")
    await converged(cluster, generation=2)
    assert cluster.service("tiny") is not None and cluster.rayservice("tiny") is not None
    assert cluster.condition("tiny", "ResourcesApplied")["message"] == "RayService and Service match the spec"


async def test_rayservice_status_flips_ready(cluster, operator):
    await cluster.create_md(tiny_document())
    await converged(cluster)
    not_ready_since = cluster.condition("tiny", "Ready")["lastTransitionTime"]
    operator.clock.advance(60)  # a minute on, without waiting: lastTransitionTime has second resolution

    await cluster.patch(RS_PATH.format(ns="default") + "/tiny/status", {"status": ready_status()})
    await eventually(lambda: (cluster.condition("tiny", "Ready") or {}).get("status") == "True", 10, "Ready=True")
    ready = cluster.condition("tiny", "Ready")
    assert ready["reason"] == "Serving"
    flipped = datetime.fromisoformat(ready["lastTransitionTime"]) - datetime.fromisoformat(not_ready_since)
    assert flipped >= timedelta(seconds=60)
    assert cluster.condition("tiny", "SpecValid")["lastTransitionTime"] == not_ready_since  # did not flip
    assert cluster.md("tiny")["status"]["readyReplicas"] == 1
    # The Service now follows the cluster KubeRay reports as active.
    await eventually(lambda: cluster.service("tiny")["spec"]["selector"].get("ray.io/cluster") == "tiny-abcde",
                     10, "Service pinned to the active cluster")
    await eventually(lambda: [e["type"] for e in cluster.events() if e["reason"] == "Serving"] == ["Normal"],
                     10, "a Normal event for Ready")

    await cluster.patch(RS_PATH.format(ns="default") + "/tiny/status",
                        {"status": ready_status(app="UNHEALTHY", ready="False", reason="ZeroServeEndpoints")})
    await eventually(lambda: cluster.condition("tiny", "Ready")["status"] == "False", 10, "Ready=False")
    assert cluster.condition("tiny", "ServeReady")["reason"] == "ApplicationUnhealthy"
    assert cluster.md("tiny")["status"]["readyReplicas"] == 0
    await eventually(lambda: {e["reason"] for e in cluster.events() if e["type"] == "Warning"}
                     == {"ApplicationUnhealthy", "ServeNotReady"}, 10, "Warning events")


async def test_invalid_spec_reports_field_and_rule_and_creates_nothing(cluster, operator):
    doc = tiny_document(parallelism={"tensor": 3, "pipeline": 1})
    await cluster.create_md(doc)
    await eventually(lambda: (cluster.condition("tiny", "SpecValid") or {}).get("status") == "False", 10, "SpecValid")
    spec_valid = cluster.condition("tiny", "SpecValid")
    assert spec_valid["reason"] == "InvalidSpec"
    assert spec_valid["message"].startswith("spec.parallelism.tensor: 3")
    assert cluster.condition("tiny", "Ready")["reason"] == "InvalidSpec"
    await settled(cluster)
    assert cluster.rayservice("tiny") is None and cluster.service("tiny") is None
    # Not retried until the spec changes: kopf counts the change handled and holds no
    # retry of it, and neither does the work queue.
    await eventually(lambda: kopf_is_done(cluster.md("tiny")), 10, "kopf done with it")
    assert not operator.controller.is_retrying("default", "tiny")
    assert operator.controller.reconciles == 1
    # A fixed spec converges.
    await cluster.patch(MD_PATH.format(ns="default") + "/tiny", {"spec": {"parallelism": {"tensor": 1}}})
    await eventually(lambda: cluster.rayservice("tiny") and cluster.service("tiny"), 10, "children after the fix")
    await converged(cluster, generation=2)
    assert cluster.condition("tiny", "SpecValid")["status"] == "True"


async def test_invalid_update_leaves_running_children_alone(cluster, operator):
    await cluster.create_md(tiny_document())
    await converged(cluster)
    before = cluster.rayservice("tiny")["metadata"]["resourceVersion"]
    await cluster.patch(MD_PATH.format(ns="default") + "/tiny", {"spec": {"autoscaling": {"minReplicas": 1}}})
    await converged(cluster, generation=2)
    assert cluster.condition("tiny", "SpecValid")["status"] == "False"
    assert "set either replicas or autoscaling" in cluster.condition("tiny", "SpecValid")["message"]
    assert cluster.condition("tiny", "ResourcesApplied")["reason"] == "InvalidSpec"
    assert cluster.rayservice("tiny")["metadata"]["resourceVersion"] == before
    assert cluster.md("tiny")["status"]["endpoint"] == "http://tiny.default.svc:8000/v1"  # still deployed


async def test_injected_conflicts_throttling_and_server_errors_still_converge(cluster, operator):
    faults = [
        cluster.emulator.inject("GET", r"/rayservices/tiny$", 500),
        cluster.emulator.inject("POST", r"/rayservices$", 409),
        cluster.emulator.inject("POST", r"/services$", 429, retry_after="1"),
        cluster.emulator.inject("PATCH", r"/modeldeployments/tiny/status$", 503, times=2),
    ]
    started = time.monotonic()
    await cluster.create_md(tiny_document())
    await eventually(lambda: cluster.service("tiny"), 15, "Service despite faults")
    service_after = time.monotonic() - started
    await converged(cluster)
    assert [f.hits for f in faults] == [f.times for f in faults]
    assert service_after >= 1.0, "the Retry-After of the 429 was not honoured"
    assert cluster.condition("tiny", "ResourcesApplied")["status"] == "True"
    # A 409 on the replace (someone changed the object between read and write).
    put = cluster.emulator.inject("PUT", r"/rayservices/tiny$", 409)
    await cluster.patch(MD_PATH.format(ns="default") + "/tiny", {"spec": {"replicas": 2}})
    await converged(cluster, generation=2)
    assert put.hits == 1
    assert cluster.rayservice("tiny")["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["replicas"] == 2


async def test_persistent_server_errors_show_in_status(cluster, operator):
    cluster.emulator.inject("POST", r"/rayservices$", 500, times=1000)
    await cluster.create_md(tiny_document())
    await eventually(lambda: (cluster.condition("tiny", "ResourcesApplied") or {}).get("reason") == "ApplyFailed",
                     10, "ApplyFailed")
    # The message names the write that failed, then the server's answer.
    assert cluster.condition("tiny", "ResourcesApplied")["message"] == \
        "create RayService default/tiny: HTTP 500 Internal Server Error: injected 500"
    cluster.emulator.faults.clear()
    await eventually(lambda: (cluster.condition("tiny", "ResourcesApplied") or {}).get("status") == "True",
                     10, "recovery")


async def test_a_child_events_reconcile_is_retried_until_it_succeeds(cluster):
    """The work queue retries it at the operator's backoff for as long as it takes (no attempt cap)."""
    # A backoff that reaches its cap after three failures, and ten failures take a fraction of a second.
    running = await start_operator(operator_settings(cluster.url, retry_base_seconds=0.01, retry_max_seconds=0.04))
    try:
        await cluster.create_md(tiny_document())
        await converged(cluster)
        fault = cluster.emulator.inject("PATCH", r"/modeldeployments/tiny/status$", 503, times=10)
        await cluster.patch(RS_PATH.format(ns="default") + "/tiny/status", {"status": ready_status()})
        await eventually(lambda: (cluster.condition("tiny", "Ready") or {}).get("status") == "True", 15, "Ready=True")
        assert fault.hits == 10
    finally:
        assert await running.stop() == 0


async def test_stopping_drops_a_pending_retry(cluster):
    """kopf waits for every task left at shutdown; a retry due in a minute must not hold the stop."""
    running = await start_operator(operator_settings(cluster.url, retry_base_seconds=60, retry_max_seconds=60))
    try:
        await cluster.create_md(tiny_document())
        await converged(cluster)
        fault = cluster.emulator.inject("PATCH", r"/modeldeployments/tiny/status$", 503)
        await cluster.patch(RS_PATH.format(ns="default") + "/tiny/status", {"status": ready_status()})
        await eventually(lambda: fault.hits == 1, 10, "the failed reconcile")
    finally:
        started = time.monotonic()
        assert await running.stop() == 0
    # Well under the retry's 60 s, with room for a loaded machine (it took 7 s once in a full run).
    assert time.monotonic() - started < 30


async def test_steady_state_writes_nothing_and_costs_a_few_reads(cluster, operator):
    await cluster.create_md(tiny_document())
    await converged(cluster)
    await cluster.patch(RS_PATH.format(ns="default") + "/tiny/status", {"status": ready_status()})
    await eventually(lambda: (cluster.condition("tiny", "Ready") or {}).get("status") == "True", 10, "Ready")
    await settled(cluster)
    # Nothing is due: kopf is done with it and no retry is pending (the only timers
    # that would call the API server).
    assert kopf_is_done(cluster.md("tiny")) and not operator.controller.is_retrying("default", "tiny")

    # A RayService status change that changes nothing for us (KubeRay bumps a timestamp).
    reconciles = operator.controller.reconciles
    mark = len(cluster.emulator.requests)
    bumped = ready_status()
    bumped["lastUpdateTime"] = "2026-01-01T00:05:00Z"
    await cluster.patch(RS_PATH.format(ns="default") + "/tiny/status", {"status": bumped})
    await eventually(lambda: operator.controller.reconciles > reconciles, 10, "a reconcile")
    await settled(cluster)
    calls = [c for c in cluster.emulator.calls(mark) if c != "PATCH " + RS_PATH.format(ns="default") + "/tiny/status"]
    print(f"\nAPI calls of a steady-state reconcile (child event): {len(calls)}: {calls}")
    assert calls == [
        "GET " + MD_PATH.format(ns="default") + "/tiny",
        "GET " + RS_PATH.format(ns="default") + "/tiny",
        "GET " + SVC_PATH.format(ns="default") + "/tiny",
        "GET " + ING_PATH.format(ns="default") + "/tiny",
        # The active RayCluster the RayService names, for live worker counts (review #9).
        "GET /apis/ray.io/v1/namespaces/default/rayclusters/tiny-abcde",
    ]
    assert operator.controller.reconciles == reconciles + 1

    # The operator's own writes do not come back as reconciles.
    mark, reconciles = len(cluster.emulator.requests), operator.controller.reconciles
    await cluster.patch(MD_PATH.format(ns="default") + "/tiny", {"spec": {"replicas": 2}})
    await converged(cluster, generation=2)
    await settled(cluster)
    assert operator.controller.reconciles == reconciles + 1
    ours = [w for w in cluster.emulator.writes(mark)[1:] if "/events" not in w]  # after the test's own PATCH
    md = MD_PATH.format(ns="default") + "/tiny"
    assert ours == [
        "PUT " + RS_PATH.format(ns="default") + "/tiny",  # the Service is unchanged: not written
        "PATCH " + md + "/status",  # observedGeneration 2, replicas 2
        "PATCH " + md,  # kopf records the handled spec (an annotation)
    ]


async def test_object_in_the_way_is_left_alone_and_reported(cluster, operator):
    foreign = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "tiny", "namespace": "default"},
               "spec": {"ports": [{"port": 80}], "selector": {"app": "someone-else"}}}
    await cluster.create(SVC_PATH.format(ns="default"), foreign)
    await cluster.create_md(tiny_document())
    await eventually(lambda: (cluster.condition("tiny", "ResourcesApplied") or {}).get("reason") == "NotOwned",
                     10, "NotOwned")
    assert "Service default/tiny" in cluster.condition("tiny", "ResourcesApplied")["message"]
    assert cluster.rayservice("tiny") is not None  # the rest is applied
    assert cluster.service("tiny")["spec"]["selector"] == {"app": "someone-else"}  # untouched
    status, _ = await cluster.request("DELETE", SVC_PATH.format(ns="default") + "/tiny")
    assert status == 200
    await eventually(lambda: (cluster.service("tiny") or {}).get("metadata", {}).get("ownerReferences"),
                     10, "our Service once the name is free")
    await eventually(lambda: cluster.condition("tiny", "ResourcesApplied")["status"] == "True", 10, "Applied")


async def test_deleted_child_is_recreated(cluster, operator):
    await cluster.create_md(tiny_document())
    await converged(cluster)
    old_uid = cluster.service("tiny")["metadata"]["uid"]
    status, _ = await cluster.request("DELETE", SVC_PATH.format(ns="default") + "/tiny")
    assert status == 200
    await eventually(lambda: (cluster.service("tiny") or {}).get("metadata", {}).get("uid") not in (None, old_uid),
                     10, "Service recreated")


async def test_a_hand_edit_of_a_child_is_reverted(cluster, operator):
    """kubectl edit of what the render sets is undone, though the hash annotation stays (docs/cluster.md)."""
    await cluster.create_md(tiny_document())
    await converged(cluster)
    rendered_service, rendered_rayservice = cluster.service("tiny"), cluster.rayservice("tiny")
    await cluster.patch(SVC_PATH.format(ns="default") + "/tiny", {
        "metadata": {"labels": {naming.LABEL_INSTANCE: None, "team": "x"}},
        "spec": {"selector": {naming.LABEL_MODEL_DEPLOYMENT: "other"}, "sessionAffinity": "ClientIP"}})
    await cluster.patch(RS_PATH.format(ns="default") + "/tiny", {"spec": {"rayClusterConfig": {"rayVersion": "2.0.0"}}})
    await eventually(lambda: cluster.service("tiny")["spec"]["selector"] == rendered_service["spec"]["selector"],
                     10, "the Service's selector reverted")
    await eventually(lambda: cluster.rayservice("tiny")["spec"] == rendered_rayservice["spec"], 10, "the RayService")
    service = cluster.service("tiny")
    assert service["metadata"]["labels"] == {**rendered_service["metadata"]["labels"], "team": "x"}  # others' kept
    assert service["spec"] == rendered_service["spec"]  # a replace writes the spec as rendered
    assert read_hash(service) == read_hash(rendered_service)
    assert cluster.condition("tiny", "ResourcesApplied")["status"] == "True"


async def test_restart_resumes_without_writes(cluster):
    first = await start_operator(operator_settings(cluster.url))
    try:
        await cluster.create_md(tiny_document())
        await converged(cluster)
        await settled(cluster)
    finally:
        assert await first.stop() == 0
    mark = len(cluster.emulator.requests)
    second = await start_operator(operator_settings(cluster.url))
    try:
        await eventually(lambda: second.controller.reconciles >= 1, 10, "resume reconcile")
        await settled(cluster)
        assert cluster.emulator.writes(mark) == []
    finally:
        assert await second.stop() == 0


async def test_operator_watches_only_its_namespaces(cluster):
    running = await start_operator(operator_settings(cluster.url, namespaces=("team-a",)))
    try:
        await cluster.create_md(tiny_document(namespace="team-b"))
        await cluster.create_md(tiny_document(namespace="team-a"))
        await eventually(lambda: cluster.rayservice("tiny", "team-a"), 10, "team-a reconciled")
        await settled(cluster)
        assert cluster.rayservice("tiny", "team-b") is None
        assert "status" not in cluster.md("tiny", "team-b")
    finally:
        assert await running.stop() == 0


async def test_health_endpoints(cluster, operator):
    port = operator.operator.health_server.port
    for path in ("/healthz", "/readyz"):
        async with cluster.session.get(f"http://127.0.0.1:{port}{path}") as response:
            assert response.status == 200, path
            assert (await response.text()).strip() == "leading"


async def test_child_with_same_name_in_another_namespace_is_not_confused(cluster, operator):
    await cluster.create_md(tiny_document(namespace="a"))
    await cluster.create_md(tiny_document(namespace="b"))
    await eventually(lambda: cluster.service("tiny", "a") and cluster.service("tiny", "b"), 10, "both")
    uid_a = cluster.md("tiny", "a")["metadata"]["uid"]
    assert naming.is_controlled_by(cluster.rayservice("tiny", "a"), uid_a)
    assert not naming.is_controlled_by(cluster.rayservice("tiny", "b"), uid_a)
    await converged(cluster, ns="b")
    assert cluster.md("tiny", "b")["status"]["endpoint"] == "http://tiny.b.svc:8000/v1"


async def test_deleted_model_deployment_is_forgotten(cluster, operator):
    await cluster.create_md(tiny_document())
    await converged(cluster)
    assert operator.controller.remembers("default", "tiny")
    status, _ = await cluster.request("DELETE", MD_PATH.format(ns="default") + "/tiny")
    assert status == 200
    await eventually(lambda: not operator.controller.remembers("default", "tiny"), 10, "forgotten")
    assert cluster.emulator.get("shardserve.dev/v1alpha1/modeldeployments", "default", "tiny") is None


async def test_deploy_failure_while_not_ready_posts_a_warning(cluster, operator):
    """ServeReady stays False but its reason changes: that transition is an Event too."""
    await cluster.create_md(tiny_document())
    await converged(cluster)
    path = RS_PATH.format(ns="default") + "/tiny/status"
    await cluster.patch(path, {"status": ready_status(app="DEPLOYING", ready="False", reason="Initializing")})
    await eventually(lambda: cluster.condition("tiny", "ServeReady")["reason"] == "ApplicationDeploying", 10,
                     "ApplicationDeploying")
    await eventually(lambda: "ApplicationDeploying" in {e["reason"] for e in cluster.events()}, 10, "its event")
    await cluster.patch(path, {"status": ready_status(app="DEPLOY_FAILED", ready="False", reason="Initializing")})
    await eventually(lambda: [e["reason"] for e in cluster.events() if e["type"] == "Warning"]
                     == ["ApplicationDeployFailed"], 10, "a Warning for the failed deploy")
