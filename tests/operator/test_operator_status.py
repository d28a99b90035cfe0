"""compute_status and its parts, as tables: (RayService as KubeRay reports it) -> conditions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from shardserve.api.spec import ModelDeploymentStatus
from shardserve.api.validation import load_file
from shardserve_operator.status import (
    ApplyOutcome,
    Notice,
    compute_events,
    compute_serve_readiness,
    compute_status,
    find_condition,
)

ROOT = Path(__file__).resolve().parents[2]
TINY = load_file(ROOT / "manifests" / "examples" / "tiny-cpu.yaml")
SPANNING = load_file(Path(__file__).parent / "cases" / "pipeline-across-nodes.yaml")  # 2 pods per replica
T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)


def rayservice(ready=None, reason=None, app=None, message="", deployment=None, endpoints=0, cluster=None,
               name="tiny", service_status=None):
    """A RayService with the status fields KubeRay v1 writes."""
    status = {}
    if ready is not None:
        status["conditions"] = [{"type": "Ready", "status": ready, "reason": reason or "", "message": message,
                                 "lastTransitionTime": "2026-01-01T00:00:00Z"}]
    if service_status is not None:
        status["serviceStatus"] = service_status
    active = {}
    if app is not None:
        active["applicationStatuses"] = {name: {"status": app, "message": message}}
        if deployment is not None:
            active["applicationStatuses"][name]["serveDeploymentStatuses"] = {"llm": {"status": deployment}}
    if cluster is not None:
        # KubeRay's copy of the cluster's status: never refreshed, so status must not read it (review #9).
        active["rayClusterStatus"] = cluster
        active["rayClusterName"] = f"{name}-abcde"
    if active:
        status["activeServiceStatus"] = active
    if endpoints:
        status["numServeEndpoints"] = endpoints
    return {"metadata": {"name": name}, "status": status}


@pytest.mark.parametrize("observed, status, reason", [
    (None, "False", "WaitingForRayService"),
    ({"metadata": {"name": "tiny"}}, "False", "WaitingForRayService"),
    (rayservice(ready="False", reason="Initializing"), "False", "Initializing"),
    (rayservice(ready="False", reason="InitializingTimeout"), "False", "InitializingTimeout"),
    (rayservice(ready="False", reason="ZeroServeEndpoints", app="RUNNING"), "False", "ZeroServeEndpoints"),
    (rayservice(ready="False", reason="SomethingNew"), "False", "Initializing"),  # unknown reasons are not copied
    (rayservice(ready="False", reason="Initializing", app="DEPLOYING"), "False", "ApplicationDeploying"),
    (rayservice(ready="False", app="DEPLOY_FAILED", message="SpecError: spec.x"), "False", "ApplicationDeployFailed"),
    (rayservice(ready="True", app="UNHEALTHY"), "False", "ApplicationUnhealthy"),
    (rayservice(ready="True", reason="NonZeroServeEndpoints", app="RUNNING", endpoints=2), "True", "ServeRunning"),
    (rayservice(ready="True", app="DEPLOYING", endpoints=1), "True", "ServeRunning"),  # an in-place update rolls out
    (rayservice(ready="True", app="RUNNING", name="other"), "False", "ApplicationMissing"),
    (rayservice(service_status="Running"), "True", "ServeRunning"),  # KubeRay before conditions
])
def test_serve_readiness_reads_kuberays_status(observed, status, reason):
    state = compute_serve_readiness(observed, "tiny")
    assert (state.status, state.reason) == (status, reason)
    assert state.reason[0].isupper() and state.reason.isalnum()


def test_deploy_failure_message_comes_from_serve():
    state = compute_serve_readiness(rayservice(ready="False", app="DEPLOY_FAILED", message="boom: spec.x"), "tiny")
    assert state.message == "boom: spec.x"


def conditions_of(status):
    return {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}


@pytest.mark.parametrize("md, problems, applied, observed, expect", [
    (TINY, (), ApplyOutcome(), None,
     {"SpecValid": ("True", "SpecAccepted"), "ResourcesApplied": ("True", "Applied"),
      "ServeReady": ("False", "WaitingForRayService"), "Progressing": ("True", "WaitingForRayService"),
      "Ready": ("False", "ServeNotReady")}),
    (TINY, (), ApplyOutcome(), rayservice(ready="True", app="RUNNING", deployment="HEALTHY", endpoints=1),
     {"SpecValid": ("True", "SpecAccepted"), "ResourcesApplied": ("True", "Applied"),
      "ServeReady": ("True", "ServeRunning"), "Progressing": ("False", "RolledOut"), "Ready": ("True", "Serving")}),
    (None, ("spec.parallelism.tensor: must be >= 1",), None, None,
     {"SpecValid": ("False", "InvalidSpec"), "ResourcesApplied": ("False", "InvalidSpec"),
      "ServeReady": ("False", "WaitingForRayService"), "Progressing": ("False", "InvalidSpec"),
      "Ready": ("False", "InvalidSpec")}),
    (None, ("spec.model.source: bad",), None, rayservice(ready="True", app="RUNNING", endpoints=1),
     {"SpecValid": ("False", "InvalidSpec"), "ResourcesApplied": ("False", "InvalidSpec"),
      "ServeReady": ("True", "ServeRunning"), "Progressing": ("False", "InvalidSpec"),
      "Ready": ("False", "InvalidSpec")}),  # old version still serves
    (TINY, (), ApplyOutcome(not_owned=("Service default/tiny exists and is controlled by no controller",)),
     rayservice(ready="True", app="RUNNING"),
     {"SpecValid": ("True", "SpecAccepted"), "ResourcesApplied": ("False", "NotOwned"),
      "ServeReady": ("True", "ServeRunning"), "Progressing": ("False", "ResourcesNotApplied"),
      "Ready": ("False", "ResourcesNotApplied")}),
    (TINY, (), ApplyOutcome(error="HTTP 500"), None,
     {"SpecValid": ("True", "SpecAccepted"), "ResourcesApplied": ("False", "ApplyFailed"),
      "ServeReady": ("False", "WaitingForRayService"), "Progressing": ("False", "ResourcesNotApplied"),
      "Ready": ("False", "ResourcesNotApplied")}),
    (TINY, (), ApplyOutcome(error="the installed RayService CRD lacks spec.rayClusterConfig.authOptions",
                            reason="KubeRayUnsupported"), rayservice(ready="True", app="RUNNING"),
     {"SpecValid": ("True", "SpecAccepted"), "ResourcesApplied": ("False", "KubeRayUnsupported"),
      "ServeReady": ("True", "ServeRunning"), "Progressing": ("False", "ResourcesNotApplied"),
      "Ready": ("False", "ResourcesNotApplied")}),  # review #7
    (TINY, (), ApplyOutcome(error="PersistentVolumeClaim default/m does not exist", reason="ClaimNotFound"), None,
     {"SpecValid": ("True", "SpecAccepted"), "ResourcesApplied": ("False", "ClaimNotFound"),
      "ServeReady": ("False", "WaitingForRayService"), "Progressing": ("False", "ResourcesNotApplied"),
      "Ready": ("False", "ResourcesNotApplied")}),  # review #11
])
def test_conditions_table(md, problems, applied, observed, expect):
    status = compute_status(md, observed, 7, name="tiny", namespace="default", now=T0,
                            problems=problems, applied=applied)
    assert conditions_of(status) == expect
    assert [c["type"] for c in status["conditions"]] == ["SpecValid", "ResourcesApplied", "ServeReady", "Progressing",
                                                         "Ready"]
    for condition in status["conditions"]:
        assert condition["observedGeneration"] == 7
        assert condition["lastTransitionTime"] == "2026-01-01T12:00:00Z"
    assert status["observedGeneration"] == 7
    ModelDeploymentStatus.model_validate(status)  # the shape the CRD will be generated from


def test_invalid_spec_names_field_and_rule_and_keeps_what_is_deployed():
    previous = compute_status(TINY, rayservice(ready="True", app="RUNNING", deployment="HEALTHY"), 1,
                              name="tiny", namespace="default", now=T0)
    problems = ("spec.parallelism.tensor: 3 does not divide the model's 4 attention heads",)
    status = compute_status(None, None, 2, name="tiny", namespace="default", now=T0, problems=problems,
                            previous=previous)
    assert find_condition(status["conditions"], "SpecValid")["message"] == problems[0]
    for key in ("replicas", "readyReplicas", "endpoint", "placement", "selector"):
        assert status[key] == previous[key]
    assert status["observedGeneration"] == 2


def test_status_fields_for_a_valid_spec():
    status = compute_status(TINY, None, 1, name="tiny", namespace="team-a", now=T0)
    assert status["endpoint"] == "http://tiny.team-a.svc:8000/v1"
    assert status["selector"] == "shardserve.dev/model-deployment=tiny,ray.io/node-type=worker"
    assert status["placement"] == {"acceleratorsPerReplica": 1, "podsPerReplica": 1, "acceleratorsPerPod": 1,
                                   "backend": "mp", "strategy": "STRICT_PACK"}
    assert (status["replicas"], status["readyReplicas"]) == (1, 0)


def raycluster(desired=None, ready=None, available=None, name="llama-405b-abcde"):
    """A RayCluster with the status counts KubeRay writes (each omitted when 0)."""
    status = {key: value for key, value in (("desiredWorkerReplicas", desired), ("readyWorkerReplicas", ready),
                                            ("availableWorkerReplicas", available)) if value is not None}
    return {"metadata": {"name": name}, "spec": {"workerGroupSpecs": []}, "status": status}


STALE = {"desiredWorkerReplicas": 0, "readyWorkerReplicas": 0}  # what the RayService's copy still says


@pytest.mark.parametrize("observed, cluster, replicas, ready", [
    (None, None, 1, 0),  # autoscaling floor 0 still starts one replica
    (rayservice(ready="True", app="RUNNING", name="llama-405b", cluster=STALE),
     raycluster(desired=4, ready=2), 2, 1),
    (rayservice(ready="True", app="RUNNING", deployment="HEALTHY", name="llama-405b", cluster=STALE),
     raycluster(desired=4, ready=3), 2, 2),
    (rayservice(ready="True", app="RUNNING", name="llama-405b", cluster=STALE),
     raycluster(desired=40, ready=40), 2, 2),  # clamped to max
    (rayservice(ready="True", app="RUNNING", name="llama-405b", cluster=STALE),
     raycluster(desired=2, available=2), 1, 1),  # no readyWorkerReplicas: the running pods
    (rayservice(ready="True", app="RUNNING", name="llama-405b", cluster=STALE), raycluster(), 1, 0),  # all 0: omitted
    (rayservice(ready="False", reason="Initializing", name="llama-405b", cluster=STALE),
     raycluster(desired=2, ready=2), 1, 0),
    (rayservice(ready="True", app="RUNNING", name="llama-405b", cluster={"desiredWorkerReplicas": 4}),
     None, 1, 0),  # the active RayCluster could not be read: the RayService's stale copy is not used
])
def test_replica_counts_come_from_the_active_rayclusters_own_status(observed, cluster, replicas, ready):
    """review #9: KubeRay never refreshes rayClusterStatus inside the RayService; the RayCluster's own status is live."""
    clusters = {"llama-405b-abcde": cluster} if cluster else {}
    status = compute_status(SPANNING, observed, 1, name="llama-405b", namespace="llm", now=T0, clusters=clusters)
    assert (status["replicas"], status["readyReplicas"]) == (replicas, ready)
    assert status["placement"]["podsPerReplica"] == 2


def test_last_transition_time_moves_only_when_status_flips():
    first = compute_status(TINY, None, 1, name="tiny", namespace="default", now=T0)
    # Same statuses, new reason/message/generation: times stay.
    later = T0 + timedelta(minutes=5)
    second = compute_status(TINY, rayservice(ready="False", reason="Initializing"), 2, name="tiny",
                            namespace="default", now=later, previous=first)
    assert find_condition(second["conditions"], "ServeReady")["reason"] == "Initializing"
    for c in second["conditions"]:
        assert c["lastTransitionTime"] == "2026-01-01T12:00:00Z", c["type"]
        assert c["observedGeneration"] == 2
    # ServeReady and Ready flip: only they move.
    flipped_at = T0 + timedelta(minutes=9)
    third = compute_status(TINY, rayservice(ready="True", app="RUNNING"), 2, name="tiny", namespace="default",
                           now=flipped_at, previous=second)
    times = {c["type"]: c["lastTransitionTime"] for c in third["conditions"]}
    assert times == {"SpecValid": "2026-01-01T12:00:00Z", "ResourcesApplied": "2026-01-01T12:00:00Z",
                     "ServeReady": "2026-01-01T12:09:00Z", "Progressing": "2026-01-01T12:09:00Z",
                     "Ready": "2026-01-01T12:09:00Z"}
    # Recomputing the same inputs gives the same status: nothing to write.
    again = compute_status(TINY, rayservice(ready="True", app="RUNNING"), 2, name="tiny", namespace="default",
                           now=flipped_at + timedelta(hours=1), previous=third)
    assert again == third


def test_events_only_on_transitions():
    first = compute_status(TINY, None, 1, name="tiny", namespace="default", now=T0)
    events = compute_events(None, first)
    assert [(e.type, e.reason) for e in events] == [
        ("Normal", "SpecAccepted"), ("Normal", "Applied"), ("Normal", "WaitingForRayService"),
        ("Normal", "ServeNotReady")]
    assert compute_events(first, first) == []
    ready = compute_status(TINY, rayservice(ready="True", app="RUNNING"), 1, name="tiny", namespace="default",
                           now=T0, previous=first)
    assert [(e.type, e.reason) for e in compute_events(first, ready)] == [
        ("Normal", "ServeRunning"), ("Normal", "RolledOut"), ("Normal", "Serving")]
    broken = compute_status(TINY, rayservice(ready="True", app="UNHEALTHY", message="replica died"), 1,
                            name="tiny", namespace="default", now=T0, previous=ready)
    events = compute_events(ready, broken)
    assert [(e.type, e.reason) for e in events] == [("Warning", "ApplicationUnhealthy"), ("Warning", "ServeNotReady")]
    assert "replica died" in events[0].message


def test_scaled_event_when_the_replica_count_changes():
    before = {"replicas": 1, "readyReplicas": 1, "conditions": []}
    after = {"replicas": 2, "readyReplicas": 1, "conditions": []}
    [event] = compute_events(before, after)
    assert (event.type, event.reason) == ("Normal", "Scaled")
    assert event.message == "scaled up from 1 to 2 replica(s); ready 1"
    [down] = compute_events(after, {"replicas": 1, "readyReplicas": 1, "conditions": []})
    assert down.message.startswith("scaled down from 2 to 1")
    assert compute_events(after, after) == []
    assert [e.reason for e in compute_events(None, after)] == []  # the first status is no scaling


def test_events_when_a_reason_changes_while_the_status_stays():
    deploying = compute_status(TINY, rayservice(ready="False", reason="Initializing", app="DEPLOYING"), 1,
                               name="tiny", namespace="default", now=T0)
    failed = compute_status(TINY, rayservice(ready="False", reason="Initializing", app="DEPLOY_FAILED",
                                             message="no node fits"), 1,
                            name="tiny", namespace="default", now=T0, previous=deploying)
    # ServeReady stays False with a new reason: a Warning. Ready keeps its reason (ServeNotReady): nothing.
    events = compute_events(deploying, failed)
    assert [(e.type, e.reason) for e in events] == [("Warning", "ApplicationDeployFailed")]
    assert events[0].message == "ServeReady is False: no node fits"
    # A new message alone is no transition.
    reworded = compute_status(TINY, rayservice(ready="False", reason="Initializing", app="DEPLOY_FAILED",
                                               message="still no node fits"), 1,
                              name="tiny", namespace="default", now=T0, previous=failed)
    assert compute_events(failed, reworded) == []
    # Progress while not ready is a Normal event.
    waiting = compute_status(TINY, rayservice(), 1, name="tiny", namespace="default", now=T0)
    assert [(e.type, e.reason) for e in compute_events(waiting, deploying)] == [("Normal", "ApplicationDeploying")]


# ---------------------------------------------------------------- rollouts, Ready and pauses (review #8)

def rolling(generation=2, observed=2, upgrade=None, pending=None, app="RUNNING", deployment="HEALTHY",
            pending_app=None):
    """A RayService KubeRay serves from tiny-old; `generation` is its metadata.generation."""
    rs = rayservice(ready="True", reason="NonZeroServeEndpoints", app=app, deployment=deployment, endpoints=1)
    rs["metadata"]["generation"] = generation
    status = rs["status"]
    if observed is not None:
        status["observedGeneration"] = observed
    status.setdefault("activeServiceStatus", {})["rayClusterName"] = "tiny-old"
    if upgrade is not None:
        status["conditions"].append({"type": "UpgradeInProgress", "status": upgrade,
                                     "reason": "BothActivePendingClustersExist" if upgrade == "True"
                                     else "NoPendingCluster"})
    if pending:
        status["pendingServiceStatus"] = {"rayClusterName": pending}
        if pending_app:
            status["pendingServiceStatus"]["applicationStatuses"] = {"tiny": pending_app}
    return rs


@pytest.mark.parametrize("observed, progressing, ready", [
    (rolling(), ("False", "RolledOut"), ("True", "Serving")),
    (rolling(generation=3, observed=2), ("True", "WaitingForKubeRay"), ("False", "RollingOut")),
    (rolling(observed=None), ("True", "WaitingForKubeRay"), ("False", "RollingOut")),
    (rolling(upgrade="True", pending="tiny-new"), ("True", "UpgradeInProgress"), ("False", "RollingOut")),
    (rolling(upgrade="True"), ("True", "UpgradeInProgress"), ("False", "RollingOut")),  # named later
    (rolling(upgrade="False"), ("False", "RolledOut"), ("True", "Serving")),
    (rolling(app="DEPLOYING", deployment="UPDATING"), ("True", "ApplicationDeploying"), ("False", "RollingOut")),
    (rolling(app="UNHEALTHY"), ("False", "RolledOut"), ("False", "ServeNotReady")),
])
def test_ready_only_once_the_latest_generation_is_live(observed, progressing, ready):
    """review #8: KubeRay keeps Ready=True from the old cluster during an upgrade; ours does not."""
    status = compute_status(TINY, observed, 5, name="tiny", namespace="default", now=T0)
    assert (find_condition(status["conditions"], "Progressing")["status"],
            find_condition(status["conditions"], "Progressing")["reason"]) == progressing
    condition = find_condition(status["conditions"], "Ready")
    assert (condition["status"], condition["reason"]) == ready
    if ready[1] == "RollingOut":
        assert find_condition(status["conditions"], "ServeReady")["status"] == "True"  # the old one serves
        assert "generation 5 is rolling out" in condition["message"]
        assert condition["message"].endswith("the previous generation still serves")


def test_an_upgrade_names_both_clusters_and_the_new_ones_progress():
    """review #8: the message says which cluster still serves and how far the new one is."""
    observed = rolling(upgrade="True", pending="tiny-new",
                       pending_app={"status": "DEPLOY_FAILED", "message": "no GPU fits"})
    new_cluster = {"metadata": {"name": "tiny-new"},
                   "spec": {"workerGroupSpecs": [{"groupName": "workers", "replicas": 2, "minReplicas": 2,
                                                  "maxReplicas": 2}]},
                   "status": {"desiredWorkerReplicas": 2, "readyWorkerReplicas": 1}}
    status = compute_status(TINY, observed, 2, name="tiny", namespace="default", now=T0,
                            clusters={"tiny-new": new_cluster})
    message = find_condition(status["conditions"], "Progressing")["message"]
    assert "RayCluster tiny-new" in message and "1 of 2 worker pod(s) ready" in message
    assert "DEPLOY_FAILED: no GPU fits" in message and message.endswith("RayCluster tiny-old still serves")


def test_first_cluster_is_initializing_not_an_upgrade():
    observed = rayservice(ready="False", reason="Initializing")
    observed["metadata"]["generation"] = 1
    observed["status"].update(observedGeneration=1, pendingServiceStatus={"rayClusterName": "tiny-first"})
    status = compute_status(TINY, observed, 1, name="tiny", namespace="default", now=T0)
    assert find_condition(status["conditions"], "Progressing")["reason"] == "Initializing"
    assert find_condition(status["conditions"], "Ready")["reason"] == "ServeNotReady"


def test_a_failed_deploy_ends_the_rollout():
    status = compute_status(TINY, rolling(app="DEPLOY_FAILED", deployment="UNHEALTHY"), 2, name="tiny",
                            namespace="default", now=T0)
    assert find_condition(status["conditions"], "Progressing")["status"] == "False"
    assert find_condition(status["conditions"], "Progressing")["reason"] == "ApplicationDeployFailed"
    # Its event is ServeReady's, not twice.
    events = compute_events(compute_status(TINY, rolling(), 2, name="tiny", namespace="default", now=T0), status)
    assert [(e.type, e.reason) for e in events] == [("Warning", "ApplicationDeployFailed"),
                                                    ("Warning", "ServeNotReady")]


def test_rolling_out_and_back_are_normal_events():
    """review #8: Ready flips to RollingOut and back; Progressing's own events are Normal."""
    serving = compute_status(TINY, rolling(), 1, name="tiny", namespace="default", now=T0)
    rolling_out = compute_status(TINY, rolling(generation=3, observed=2), 2, name="tiny", namespace="default",
                                 now=T0, previous=serving)
    events = compute_events(serving, rolling_out)
    # A rollout is what the user asked for: not a Warning.
    assert [(e.type, e.reason) for e in events] == [("Normal", "WaitingForKubeRay"), ("Normal", "RollingOut")]
    done = compute_status(TINY, rolling(generation=3, observed=3), 2, name="tiny", namespace="default",
                          now=T0, previous=rolling_out)
    assert [(e.type, e.reason) for e in compute_events(rolling_out, done)] == [("Normal", "RolledOut"),
                                                                               ("Normal", "Serving")]


def test_paused_says_so_and_counts_nothing():
    """A paused deployment (spec.replicas 0) has no RayService, hence no Ray pod."""
    status = compute_status(TINY, None, 4, name="tiny", namespace="default", now=T0, paused=True)
    assert conditions_of(status) == {
        "SpecValid": ("True", "SpecAccepted"), "ResourcesApplied": ("True", "Applied"),
        "ServeReady": ("False", "Paused"), "Progressing": ("False", "Paused"), "Ready": ("False", "Paused")}
    assert (status["replicas"], status["readyReplicas"]) == (0, 0)
    running = compute_status(TINY, rolling(), 3, name="tiny", namespace="default", now=T0)
    assert {(e.type, e.reason) for e in compute_events(running, status)} == {("Normal", "Paused"), ("Normal", "Scaled")}
    assert find_condition(status["conditions"], "ResourcesApplied")["message"] == \
        "Service matches the spec; no RayService while paused"
    assert "spec.replicas is 0" in find_condition(status["conditions"], "Ready")["message"]
    ModelDeploymentStatus.model_validate(status)


# ---------------------------------------------------------------- a claim pods cannot share (review #11)

def test_unshareable_claim_is_in_the_message_and_warned_once():
    """review #11: applied anyway; ResourcesApplied's message carries it and one Warning is posted."""
    notice = Notice("ClaimNotShareable", "PersistentVolumeClaim weights offers ReadWriteOnce: ...")
    first = compute_status(TINY, None, 1, name="tiny", namespace="default", now=T0,
                           applied=ApplyOutcome(notices=(notice,)))
    applied = find_condition(first["conditions"], "ResourcesApplied")
    assert (applied["status"], applied["reason"]) == ("True", "Applied")
    assert applied["message"].endswith("; " + notice.message)
    events = compute_events(None, first, (notice,))
    assert [(e.type, e.reason) for e in events if e.reason == "ClaimNotShareable"] == [("Warning", "ClaimNotShareable")]
    again = compute_status(TINY, None, 1, name="tiny", namespace="default", now=T0, previous=first,
                           applied=ApplyOutcome(notices=(notice,)))
    assert compute_events(first, again, (notice,)) == []
