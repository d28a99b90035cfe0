"""Pure parts of the operator: settings, backoff, the Lease claim, replace bodies, drift, health."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime, timedelta, timezone

import kubernetes_validate
import pytest

from shardserve.api.crd import build_crd
from shardserve_operator import naming
from shardserve_operator.apply import build_event, build_replacement, build_status_patch
from shardserve_operator.drift import find_child_drift, find_drift
from shardserve_operator.failures import compute_retry_delay
from shardserve_operator.health import Health, Phase
from shardserve_operator.kinds import INGRESS, LEASE, MODEL_DEPLOYMENT, SERVICE, kind_of
from shardserve_operator.leader import compute_lease_claim, format_microtime, parse_microtime
from shardserve_operator.settings import OperatorSettings, add_arguments, from_args
from shardserve_operator.status import EventRecord

T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)


# ---------------------------------------------------------------- settings

@pytest.mark.parametrize("value, namespaces, clusterwide", [
    (None, (), True),
    ("", (), True),
    ("*", (), True),
    ("team-a", ("team-a",), False),
    ("team-a, team-b,", ("team-a", "team-b"), False),
    ("team-*", ("team-*",), False),
])
def test_namespaces_setting(value, namespaces, clusterwide):
    env = {} if value is None else {"SHARDSERVE_NAMESPACES": value}
    settings = OperatorSettings.from_env(env)
    assert settings.namespaces == namespaces
    assert settings.clusterwide is clusterwide


@pytest.mark.parametrize("value, label", [
    (None, "nvidia.com/gpu.product"), ("", ""), ("cloud.example.com/gpu", "cloud.example.com/gpu")])
def test_gpu_product_label_setting_reaches_the_render(value, label):
    """The chart's gpuProductLabel; empty switches the GPU-type affinity off (cluster review #14)."""
    env = {} if value is None else {"SHARDSERVE_GPU_PRODUCT_LABEL": value}
    assert OperatorSettings.from_env(env).render.gpu_product_label == label


def test_settings_from_env_and_flags():
    env = {"SHARDSERVE_DEFAULT_IMAGE": "img:1", "SHARDSERVE_HEALTH_PORT": "9000", "POD_NAME": "op-0",
           "POD_NAMESPACE": "shardserve-system", "SHARDSERVE_LEADER_ELECTION": "false",
           "SHARDSERVE_RETRY_MAX_SECONDS": "5"}
    settings = OperatorSettings.from_env(env)
    assert settings.render.default_image == "img:1"
    assert settings.health_port == 9000 and settings.retry_max_seconds == 5.0
    lease = settings.leader_election
    assert (lease.enabled, lease.identity, lease.lease_namespace) == (False, "op-0", "shardserve-system")

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    flags = from_args(parser.parse_args(["-n", "a", "-n", "b", "--default-image", "img:2", "--no-leader-election"]),
                      {"SHARDSERVE_NAMESPACES": "c"})
    assert flags.namespaces == ("a", "b") and flags.render.default_image == "img:2"
    assert flags.leader_election.enabled is False
    everything = from_args(parser.parse_args(["-A"]), {"SHARDSERVE_NAMESPACES": "c"})
    assert everything.clusterwide
    with pytest.raises(ValueError):
        OperatorSettings.from_env({"SHARDSERVE_LEADER_ELECTION": "maybe"})


# ---------------------------------------------------------------- retries

@pytest.mark.parametrize("attempt, retry_after, jitter, expected", [
    (0, None, 0.0, 0.5),
    (1, None, 0.0, 1.0),
    (3, None, 0.0, 4.0),
    (10, None, 0.0, 60.0),  # capped
    (0, 7.0, 0.0, 7.0),  # Retry-After wins when longer
    (5, 2.0, 0.0, 16.0),  # ... and never shortens the backoff
    (1, None, 0.2, 1.2),
])
def test_retry_delay(attempt, retry_after, jitter, expected):
    assert compute_retry_delay(attempt, base=0.5, cap=60, retry_after=retry_after, jitter=jitter) == pytest.approx(expected)


# ---------------------------------------------------------------- leader election

def lease(holder, renewed, duration=15, transitions=0, acquired=None):
    return {"holderIdentity": holder, "leaseDurationSeconds": duration, "renewTime": format_microtime(renewed),
            "acquireTime": format_microtime(acquired or renewed), "leaseTransitions": transitions}


@pytest.mark.parametrize("spec, identity, now, takes, transitions", [
    (None, "a", T0, True, 0),  # no lease yet
    (lease("b", T0), "a", T0 + timedelta(seconds=10), False, None),  # b's lease is valid
    (lease("b", T0), "a", T0 + timedelta(seconds=16), True, 1),  # b stopped renewing: take over
    (lease("a", T0, transitions=2), "a", T0 + timedelta(seconds=5), True, 2),  # renew own
    (lease("a", T0), "a", T0 + timedelta(seconds=60), True, 0),  # own, even if expired
    ({"holderIdentity": None, "leaseDurationSeconds": 1, "renewTime": format_microtime(T0)}, "a", T0, True, 0),  # released
])
def test_lease_claim(spec, identity, now, takes, transitions):
    claim = compute_lease_claim(spec, identity, now, 15)
    assert (claim is not None) is takes
    if claim:
        assert claim["holderIdentity"] == identity
        assert parse_microtime(claim["renewTime"]) == now
        assert claim["leaseTransitions"] == transitions


def test_renewal_keeps_acquire_time():
    claim = compute_lease_claim(lease("a", T0, acquired=T0 - timedelta(hours=1)), "a", T0 + timedelta(seconds=2), 15)
    assert parse_microtime(claim["acquireTime"]) == T0 - timedelta(hours=1)


# ---------------------------------------------------------------- apply bodies

def test_replacement_keeps_what_others_set_and_the_resource_version():
    existing = {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "tiny", "namespace": "default", "resourceVersion": "41", "uid": "u",
                     "labels": {"team": "x", naming.LABEL_MANAGED_BY: naming.MANAGER},
                     "annotations": {"note": "keep", naming.ANNOTATION_RENDERED_HASH: "old"},
                     "ownerReferences": [{"uid": "other", "kind": "Thing", "name": "t"},
                                         {"uid": "md", "kind": "ModelDeployment", "controller": True, "name": "tiny"}],
                     "managedFields": [{"manager": "x"}]},
        "spec": {"clusterIP": "10.0.0.7", "clusterIPs": ["10.0.0.7"], "ports": [{"port": 1}], "stale": True},
        "status": {"loadBalancer": {}},
    }
    desired = {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "tiny", "labels": {naming.LABEL_MANAGED_BY: naming.MANAGER},
                     "annotations": {naming.ANNOTATION_RENDERED_HASH: "new"},
                     "ownerReferences": [{"uid": "md", "kind": "ModelDeployment", "controller": True, "name": "tiny"}]},
        "spec": {"ports": [{"port": 8000}], "selector": {"a": "b"}},
    }
    body = build_replacement(existing, desired)
    meta = body["metadata"]
    assert meta["resourceVersion"] == "41" and "managedFields" not in meta
    assert meta["labels"]["team"] == "x" and meta["annotations"]["note"] == "keep"
    assert meta["annotations"][naming.ANNOTATION_RENDERED_HASH] == "new"
    assert [r["uid"] for r in meta["ownerReferences"]] == ["other", "md"]
    assert body["spec"] == {"ports": [{"port": 8000}], "selector": {"a": "b"},
                            "clusterIP": "10.0.0.7", "clusterIPs": ["10.0.0.7"]}  # stale key gone, allocation kept


def test_events_and_leases_validate_against_kubernetes_schemas():
    md = {"apiVersion": "shardserve.dev/v1alpha1", "kind": "ModelDeployment",
          "metadata": {"name": "tiny", "namespace": "default", "uid": "u-1"}}
    event = build_event(md, EventRecord("Warning", "InvalidSpec", "SpecValid is False: spec.x: bad"), T0)
    kubernetes_validate.validate(event, kubernetes_validate.latest_version(), strict=True)
    assert event["metadata"]["name"].startswith("tiny.")
    # Stamped in UTC whatever the clock's zone (an aware time two hours east: the same instant).
    east = build_event(md, EventRecord("Normal", "Serving", "x"), T0.astimezone(timezone(timedelta(hours=2))))
    assert east["firstTimestamp"] == east["lastTimestamp"] == "2026-01-01T12:00:00Z"
    lease = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
             "metadata": {"name": "shardserve-operator", "namespace": "default"},
             "spec": compute_lease_claim(None, "op-0", T0, 15)}
    kubernetes_validate.validate(lease, kubernetes_validate.latest_version(), strict=True)


def test_status_patch_removes_fields_that_are_gone():
    assert build_status_patch({"a": 1, "b": 2}, {"a": 3}) == {"status": {"b": None, "a": 3}}


# ---------------------------------------------------------------- naming, kinds, health

def test_owner_lookup():
    child = {"metadata": {"ownerReferences": [
        {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs", "uid": "1"},
        naming.build_owner_reference("tiny", "u-1")]}}
    assert naming.find_owner_name(child) == "tiny"
    assert naming.is_controlled_by(child, "u-1") and not naming.is_controlled_by(child, "u-2")
    assert naming.find_owner_name({"metadata": {}}) is None


def test_kind_paths():
    assert SERVICE.path("ns", "x") == "/api/v1/namespaces/ns/services/x"
    assert INGRESS.path("ns") == "/apis/networking.k8s.io/v1/namespaces/ns/ingresses"
    assert MODEL_DEPLOYMENT.path("ns", "x", "status") == "/apis/shardserve.dev/v1alpha1/namespaces/ns/modeldeployments/x/status"
    assert LEASE.group == "coordination.k8s.io"
    assert kind_of({"apiVersion": "v1", "kind": "Service"}) is SERVICE


def test_the_model_deployment_kind_is_the_crds():
    crd = build_crd()
    names, (version,) = crd["spec"]["names"], crd["spec"]["versions"]
    assert (MODEL_DEPLOYMENT.group, MODEL_DEPLOYMENT.version) == (crd["spec"]["group"], version["name"])
    assert (MODEL_DEPLOYMENT.kind, MODEL_DEPLOYMENT.plural) == (names["kind"], names["plural"])
    owner = naming.build_owner_reference("tiny", "u-1")
    assert (owner["apiVersion"], owner["kind"]) == (MODEL_DEPLOYMENT.api_version, "ModelDeployment")


@pytest.mark.parametrize("phase, kopf_ready, failed, live, ready", [
    (Phase.STARTING, False, None, 200, 503),
    (Phase.STANDBY, False, None, 200, 200),
    (Phase.LEADING, False, None, 200, 503),
    (Phase.LEADING, True, None, 200, 200),
    (Phase.LEADING, True, "boom", 500, 503),
    (Phase.STOPPING, True, None, 200, 503),
])
def test_health_answers(phase, kopf_ready, failed, live, ready):
    health = Health()
    health.phase, health.kopf_ready, health.kopf_failed = phase, kopf_ready, failed
    assert health.compute_liveness()[0] == live
    assert health.compute_readiness()[0] == ready


# ---------------------------------------------------------------- drift of a child from its render

@pytest.mark.parametrize("desired, live, drift", [
    ({"a": 1, "b": {"c": "x"}}, {"a": 1, "b": {"c": "x", "d": "server default"}, "e": 5}, None),  # extra keys
    ({"a": 1}, {"a": 2}, "a"),
    ({"b": {"c": "x"}}, {"b": {"c": "y"}}, "b.c"),
    ({"b": {"c": "x"}}, {"b": {}}, "b.c"),  # a value removed
    ({"p": [{"port": 80}, {"port": 81}]}, {"p": [{"port": 80, "protocol": "TCP"}, {"port": 82}]}, "p[1].port"),
    ({"p": [1, 2]}, {"p": [1]}, "p"),  # a list is compared whole, by length and item
    ({"flag": False, "n": 0, "s": "", "m": {}, "l": [], "none": None}, {}, None),  # zero or unset: absent is fine
    ({"flag": True}, {}, "flag"),
    ({"flag": False}, {"flag": True}, "flag"),
    ({"n": 1}, {"n": 1.0}, None),  # one JSON number
    ({"n": 1}, {"n": True}, "n"),
    ({"n": "1"}, {"n": 1}, "n"),
])
def test_drift_is_what_the_render_sets_and_the_server_lacks(desired, live, drift):
    assert find_drift(desired, live) == drift


def test_child_drift_looks_at_spec_labels_and_annotations_only():
    desired = {"apiVersion": "v1", "kind": "Service",
               "metadata": {"name": "tiny", "labels": {"a": "1"}, "annotations": {naming.ANNOTATION_RENDERED_HASH: "h"},
                            "ownerReferences": [{"uid": "u"}]},
               "spec": {"selector": {"x": "y"}, "ports": [{"port": 8000}]}}
    live = {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "tiny", "labels": {"a": "1", "team": "b"}, "resourceVersion": "9",
                         "annotations": {naming.ANNOTATION_RENDERED_HASH: "h", "note": "kept"}},
            "spec": {"selector": {"x": "y"}, "ports": [{"port": 8000, "protocol": "TCP"}], "clusterIP": "10.0.0.1"},
            "status": {"loadBalancer": {}}}
    assert find_child_drift(desired, live) is None
    assert find_child_drift(desired, {**live, "spec": {**live["spec"], "selector": {"x": "z"}}}) == "spec.selector.x"
    unlabelled = {**live, "metadata": {**live["metadata"], "labels": {"team": "b"}}}
    assert find_child_drift(desired, unlabelled) == "metadata.labels.a"
