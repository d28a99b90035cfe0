"""Pure parts of the KubeRay and cluster checks: the CRD walk, strict-validation refusals, claims,
RayCluster worker bounds and the rules read from KubeRay's source."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from shardserve.api.kuberay import (
    MIN_KUBERAY_VERSION_TEXT,
    REQUIRED_RAYSERVICE_FIELDS,
    build_cluster_labels,
    compute_desired_workers,
    find_cluster_names,
    read_worker_counts,
)
from shardserve.api.validation import load_file
from shardserve_operator import naming
from shardserve_operator.api_errors import build_api_error
from shardserve_operator.apply import build_bounds_patch
from shardserve_operator.checks import (
    compute_claim_problem,
    compute_missing_fields,
    describe_missing_fields,
    find_claim_names,
    find_unknown_fields,
    format_field_path,
)
from shardserve_operator.controller import find_model_deployment
from shardserve_operator.hashing import cluster_fingerprint_of
from shardserve_operator.kinds import RAYCLUSTER, RAYSERVICE, SERVICE
from shardserve_operator.main import build_kopf_settings
from shardserve_operator.observe import is_cluster_of
from shardserve_operator.render import render_children
from shardserve_operator.settings import OperatorSettings
from tests.kuberay_crd import load_rayservice_crd

ROOT = Path(__file__).resolve().parents[2]
TINY = load_file(ROOT / "manifests" / "examples" / "tiny-cpu.yaml")

# ---------------------------------------------------------------- the installed RayService CRD (review #7)


@pytest.fixture(scope="module")
def kuberay_crd():
    return load_rayservice_crd("the walk is also tested below against a schema built in the test")


def _cluster_config_schema(crd):
    (v1,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    return v1["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["rayClusterConfig"]


def test_kuberays_own_crd_has_every_field_the_render_needs(kuberay_crd):
    """review #7: the CRD KubeRay publishes keeps authOptions, group resources and the deletion delay."""
    assert compute_missing_fields(kuberay_crd) == []


def test_a_crd_without_auth_options_is_caught(kuberay_crd):
    """review #7: KubeRay < 1.5.1 has no rayClusterConfig.authOptions; the API server would prune it."""
    old = copy.deepcopy(kuberay_crd)
    del _cluster_config_schema(old)["properties"]["authOptions"]
    assert compute_missing_fields(old) == ["spec.rayClusterConfig.authOptions"]
    message = describe_missing_fields(compute_missing_fields(old))
    assert "spec.rayClusterConfig.authOptions" in message and f">= {MIN_KUBERAY_VERSION_TEXT}" in message
    # Group resources live under a list's items.
    del _cluster_config_schema(old)["properties"]["workerGroupSpecs"]["items"]["properties"]["resources"]
    assert compute_missing_fields(old) == ["spec.rayClusterConfig.authOptions",
                                           "spec.rayClusterConfig.workerGroupSpecs[].resources"]


def _crd(spec_schema):
    return {"spec": {"versions": [{"name": "v1", "schema": {"openAPIV3Schema": {
        "type": "object", "properties": {"spec": spec_schema}}}}]}}


FULL = {"properties": {
    "rayClusterConfig": {"properties": {
        "authOptions": {"type": "object"},
        "workerGroupSpecs": {"type": "array", "items": {"properties": {"resources": {"type": "object"}}}}}},
    "rayClusterDeletionDelaySeconds": {"type": "integer"}}}


@pytest.mark.parametrize("spec_schema, missing", [
    (FULL, []),
    ({"properties": {"rayClusterConfig": {"properties": {"workerGroupSpecs": {"items": {}}}}}},
     ["spec.rayClusterConfig.authOptions", "spec.rayClusterConfig.workerGroupSpecs[].resources",
      "spec.rayClusterDeletionDelaySeconds"]),
    # Unknown fields are kept where the schema preserves them.
    ({"properties": {"rayClusterConfig": {"x-kubernetes-preserve-unknown-fields": True}},
      "x-kubernetes-preserve-unknown-fields": True}, []),
    ({"type": "object"}, ["spec.rayClusterConfig.authOptions", "spec.rayClusterConfig.workerGroupSpecs[].resources",
                          "spec.rayClusterDeletionDelaySeconds"]),
], ids=["complete", "kuberay-1.4", "preserve-unknown-fields", "no-spec-schema"])
def test_the_schema_walk(spec_schema, missing):
    """review #7, on schemas built here (the real CRD may be absent in CI)."""
    assert compute_missing_fields(_crd(spec_schema)) == missing


def test_a_crd_without_v1_counts_every_field_missing():
    crd = _crd(FULL)
    crd["spec"]["versions"][0]["name"] = "v1alpha1"
    assert len(compute_missing_fields(crd)) == len(REQUIRED_RAYSERVICE_FIELDS)


def test_field_paths_read_as_kubectl_explain_does():
    assert format_field_path(("rayClusterConfig", "workerGroupSpecs", "[]", "resources")) == \
        "spec.rayClusterConfig.workerGroupSpecs[].resources"


def _refusal(status, message):
    return build_api_error(status, "BadRequest", json.dumps({"kind": "Status", "code": status, "message": message}))


def test_strict_validation_refusals_name_their_fields():
    """review #7: kube-apiserver's refusal under fieldValidation=Strict."""
    one = _refusal(400, 'RayService in version "v1" cannot be handled as a RayService: strict decoding error: '
                        'unknown field "spec.rayClusterConfig.authOptions"')
    assert find_unknown_fields(one) == ["spec.rayClusterConfig.authOptions"]
    two = _refusal(400, 'strict decoding error: unknown field "spec.a", unknown field "spec.b"')
    assert find_unknown_fields(two) == ["spec.a", "spec.b"]
    assert find_unknown_fields(_refusal(400, "spec.ports: Duplicate value")) == []
    assert find_unknown_fields(_refusal(422, 'unknown field "spec.a"')) == []
    assert find_unknown_fields(ValueError("unknown field")) == []


# ---------------------------------------------------------------- the model's claim (review #11)

def test_claims_come_from_the_rendered_pods():
    """review #11: a pvc:// model's claim is the one the worker pods mount."""
    doc = {"apiVersion": "shardserve.dev/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": "m"},
           "spec": {**TINY.model_dump(by_alias=True, exclude_none=True, mode="json")["spec"],
                    "model": {"id": "m", "source": "pvc://weights/llama"}}}
    from shardserve.api.validation import parse_deployment

    (rayservice,) = [o for o in render_children(parse_deployment(doc)) if o["kind"] == "RayService"]
    assert find_claim_names(rayservice) == ["weights"]
    assert find_claim_names([o for o in render_children(TINY) if o["kind"] == "RayService"][0]) == []
    assert find_claim_names(None) == []


@pytest.mark.parametrize("spec_modes, bound_modes, shareable", [
    (["ReadOnlyMany"], None, True),
    (["ReadWriteMany"], None, True),
    (["ReadWriteOnce"], None, False),
    (["ReadWriteOncePod"], None, False),
    (["ReadWriteOnce"], ["ReadWriteOnce", "ReadOnlyMany"], True),  # the bound volume decides
    (["ReadOnlyMany"], ["ReadWriteOnce"], False),
    ([], None, False),
])
def test_claim_shareability(spec_modes, bound_modes, shareable):
    """review #11: readOnly in the pod does not change the volume's access mode."""
    claim = {"metadata": {"name": "weights"}, "spec": {"accessModes": spec_modes}}
    if bound_modes is not None:
        claim["status"] = {"phase": "Bound", "accessModes": bound_modes}
    problem = compute_claim_problem(claim)
    assert (problem is None) == shareable
    if problem:
        assert "PersistentVolumeClaim weights" in problem and "ReadOnlyMany" in problem


# ---------------------------------------------------------------- RayCluster worker bounds (review #2)

def _cluster(*groups):
    return {"metadata": {"name": "tiny-abcde"}, "spec": {"workerGroupSpecs": [dict(g) for g in groups]}}


def _group(name, replicas, low, high):
    return {"groupName": name, "replicas": replicas, "minReplicas": low, "maxReplicas": high}


def test_bounds_patch_tests_the_group_name_and_writes_only_what_differs():
    """review #2: KubeRay's hash ignores min/maxReplicas, so the operator writes them onto the RayCluster."""
    cluster = _cluster(_group("head-like", 1, 1, 1), _group("workers", 1, 1, 1))
    patch = build_bounds_patch(cluster, [_group("workers", 3, 3, 3)])
    assert patch == [
        {"op": "test", "path": "/spec/workerGroupSpecs/1/groupName", "value": "workers"},
        {"op": "add", "path": "/spec/workerGroupSpecs/1/minReplicas", "value": 3},
        {"op": "add", "path": "/spec/workerGroupSpecs/1/maxReplicas", "value": 3},
        {"op": "add", "path": "/spec/workerGroupSpecs/1/replicas", "value": 3},  # clamped up to the new min
    ]
    assert build_bounds_patch(_cluster(_group("workers", 3, 3, 3)), [_group("workers", 3, 3, 3)]) == []


@pytest.mark.parametrize("current, rendered, expected", [
    # The autoscaler's count within the new bounds is left alone.
    (_group("w", 2, 1, 4), _group("w", 1, 1, 8), [("maxReplicas", 8)]),
    # Scaled down: replicas clamped to the new max.
    (_group("w", 4, 1, 4), _group("w", 1, 1, 2), [("maxReplicas", 2), ("replicas", 2)]),
    # A floor raised above the current count.
    (_group("w", 0, 0, 2), _group("w", 1, 1, 2), [("minReplicas", 1), ("replicas", 1)]),
    # No replicas (an incremental upgrade's pending cluster): nothing to clamp.
    ({"groupName": "w", "minReplicas": 0, "maxReplicas": 2}, _group("w", 1, 1, 3),
     [("minReplicas", 1), ("maxReplicas", 3)]),
    # A group the render does not have is not touched.
    (_group("other", 1, 1, 1), _group("w", 5, 5, 5), []),
])
def test_bounds_patch_cases(current, rendered, expected):
    """review #2"""
    ops = build_bounds_patch(_cluster(current), [rendered])
    assert [(op["path"].rsplit("/", 1)[1], op["value"]) for op in ops if op["op"] == "add"] == expected
    if expected:
        assert ops[0] == {"op": "test", "path": "/spec/workerGroupSpecs/0/groupName", "value": current["groupName"]}


def test_the_patched_bounds_are_what_kuberay_then_keeps():
    """review #2: after the patch KubeRay's own clamp gives the rendered count (utils/util.go v1.5.1:386-407)."""
    import jsonpatch

    cluster = _cluster(_group("workers", 1, 1, 1))
    patched = jsonpatch.apply_patch(cluster, build_bounds_patch(cluster, [_group("workers", 3, 3, 3)]))
    assert compute_desired_workers(patched["spec"]["workerGroupSpecs"][0]) == 3


# ---------------------------------------------------------------- KubeRay's rules (kuberay.py)

def test_kuberay_desired_workers_clamps_replicas():
    assert compute_desired_workers(_group("w", 5, 1, 3)) == 3
    assert compute_desired_workers(_group("w", 0, 1, 3)) == 1
    assert compute_desired_workers({**_group("w", 2, 1, 3), "numOfHosts": 2}) == 4
    assert compute_desired_workers({**_group("w", 2, 1, 3), "suspend": True}) == 0
    assert compute_desired_workers(_group("w", 2, 4, 3)) == 3  # v1.5.1: max wins when min > max


def test_worker_counts_read_absent_fields_as_zero():
    """review #9: the RayCluster's own status; KubeRay omits counts that are 0."""
    assert read_worker_counts({"status": {"desiredWorkerReplicas": 4, "readyWorkerReplicas": 2}}) == \
        read_worker_counts({"status": {"desiredWorkerReplicas": 4, "availableWorkerReplicas": 2}})
    assert read_worker_counts({"status": {"state": "ready"}}).ready == 0
    assert read_worker_counts({"metadata": {}}) is None


def test_cluster_names_from_the_rayservice_status():
    rayservice = {"status": {"activeServiceStatus": {"rayClusterName": "a"},
                             "pendingServiceStatus": {"rayClusterName": "b"}}}
    assert find_cluster_names(rayservice) == ("a", "b")
    assert find_cluster_names({"status": {"pendingServiceStatus": {"rayClusterName": ""}}}) == (None, None)
    assert find_cluster_names(None) == (None, None)


def _rendered_rayservice(uid="rs-uid"):
    (rayservice,) = [o for o in render_children(TINY, owner_uid="md-uid") if o["kind"] == "RayService"]
    rayservice["metadata"]["uid"] = uid
    return rayservice


def _kuberays_cluster(rayservice, name="tiny-abcde"):
    """A RayCluster as KubeRay creates it for `rayservice` (constructRayClusterForRayService)."""
    return {"apiVersion": "ray.io/v1", "kind": "RayCluster",
            "metadata": {"name": name, "namespace": "default", "labels": build_cluster_labels(rayservice),
                         "ownerReferences": [{"apiVersion": "ray.io/v1", "kind": "RayService",
                                              "name": rayservice["metadata"]["name"],
                                              "uid": rayservice["metadata"]["uid"], "controller": True}]},
            "spec": copy.deepcopy(rayservice["spec"]["rayClusterConfig"])}


def test_a_kuberay_cluster_maps_to_its_model_deployment_by_the_copied_label():
    """review #9: the RayCluster's controller is the RayService; the label KubeRay copies names the MD."""
    rayservice = _rendered_rayservice()
    cluster = _kuberays_cluster(rayservice)
    assert cluster["metadata"]["labels"][naming.LABEL_MANAGED_BY] == naming.MANAGER
    assert find_model_deployment(RAYCLUSTER, cluster) == "tiny"
    assert naming.find_owner_name(cluster) is None  # not by owner reference
    assert is_cluster_of(cluster, rayservice, "tiny")
    assert not is_cluster_of(cluster, _rendered_rayservice(uid="another"), "tiny")
    assert not is_cluster_of(cluster, rayservice, "other-md")
    foreign = copy.deepcopy(cluster)
    del foreign["metadata"]["labels"][naming.LABEL_MANAGED_BY]
    assert find_model_deployment(RAYCLUSTER, foreign) is None
    # Our own children still map by their controller.
    (service,) = [o for o in render_children(TINY, owner_uid="md-uid") if o["kind"] == "Service"]
    assert find_model_deployment(SERVICE, {**service, "metadata": {**service["metadata"], "namespace": "default"}}) \
        == "tiny"


def test_cluster_fingerprint_follows_bounds_and_counts_only():
    cluster = _kuberays_cluster(_rendered_rayservice())
    cluster["status"] = {"desiredWorkerReplicas": 1, "readyWorkerReplicas": 0, "lastUpdateTime": "t1"}
    bumped = copy.deepcopy(cluster)
    bumped["status"]["lastUpdateTime"] = "t2"
    bumped["metadata"]["resourceVersion"] = "99"
    assert cluster_fingerprint_of(cluster) == cluster_fingerprint_of(bumped)
    ready = copy.deepcopy(cluster)
    ready["status"]["readyWorkerReplicas"] = 1
    scaled = copy.deepcopy(cluster)
    scaled["spec"]["workerGroupSpecs"][0]["maxReplicas"] = 9
    assert len({cluster_fingerprint_of(c) for c in (cluster, ready, scaled)}) == 3


# ---------------------------------------------------------------- server-side watch filters (review #17)

def test_child_watches_are_filtered_by_the_api_server():
    """review #17: kopf sends settings.watching.label_selectors as the watch's labelSelector."""
    from kopf._cogs.structs import references

    settings = build_kopf_settings(OperatorSettings())
    selector = f"{naming.LABEL_MANAGED_BY}={naming.MANAGER}"
    for kind in (RAYSERVICE, SERVICE, RAYCLUSTER):
        resource = references.Resource(group=kind.group, version=kind.version, plural=kind.plural, kind=kind.kind,
                                       namespaced=True)
        assert settings.watching.label_selectors.collect(resource) == [selector], kind
    own = references.Resource(group="shardserve.dev", version="v1alpha1", plural="modeldeployments",
                              kind="ModelDeployment", namespaced=True)
    assert settings.watching.label_selectors.collect(own) == []  # every ModelDeployment


# ---------------------------------------------------------------- review #25: Helm never upgrades CRDs

def test_a_stale_modeldeployment_crd_names_the_fields_it_would_prune():
    from shardserve.api.crd import build_crd
    from shardserve.api.spec import API_VERSION
    from shardserve_operator.checks import compute_stale_crd_fields

    current = build_crd()
    assert compute_stale_crd_fields(current, current, API_VERSION) == []
    old = copy.deepcopy(current)
    spec = old["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    del spec["model"]["properties"]["cacheSize"]
    del spec["telemetry"]
    stale = compute_stale_crd_fields(old, current, API_VERSION)
    assert "spec.model.cacheSize" in stale and "spec.telemetry" in stale
    assert all(field.startswith(("spec.model.cacheSize", "spec.telemetry")) for field in stale)
