"""The e2e suite itself (it needs a cluster to run): it skips saying why, installs the chart with valid
values, runs the cases the cluster review asked for, and its readings of KubeRay and Ray agree with theirs."""

from __future__ import annotations

import copy
import os
import re
import subprocess
import sys

import pytest

from shardserve.api.kuberay import MIN_KUBERAY_VERSION_TEXT
from shardserve.api.validation import parse_deployment
from shardserve_operator.render import render_children
from shardserve_operator.render.rollout import Cost, compute_change_cost
from tests.cluster.chart import ROOT, lint_chart, render_chart
from tests.operator.test_operator_render import CASES, by_kind

sys.path.insert(0, str(ROOT / "e2e"))

from cluster import (  # noqa: E402
    AUTOSCALING,
    CONTEXT_VAR,
    NEW_CLUSTER_EDIT,
    REPLICA_RESTART_EDIT,
    Config,
    build_tiny,
    build_tiny_autoscaled,
    describe_rollout,
    find_groups_without_cpus,
    merge,
    parse_json_output,
    read_worker_bounds,
)

# Installed pytest plugins the suite does not use: importing them took 4.5 s of each run's 6 s.
UNUSED_PLUGINS = ("hypothesispytest", "cloudcoil", "kmock")


def _run_e2e(env_changes: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHARDSERVE_E2E_")}
    env.update(env_changes)
    no_plugins = [arg for name in UNUSED_PLUGINS for arg in ("-p", f"no:{name}")]
    return subprocess.run([sys.executable, "-m", "pytest", "e2e", "-p", "no:cacheprovider", *no_plugins, *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def without_a_cluster() -> subprocess.CompletedProcess:
    """One verbose run without a cluster, for the tests that read it: each test's id and outcome, the summary."""
    return _run_e2e({}, "-v")


def test_without_a_cluster_every_test_skips_and_says_why(without_a_cluster):
    done = without_a_cluster
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{CONTEXT_VAR} is not set" in done.stdout + done.stderr
    # The summary, the last line, counts skipped tests (and warnings) and nothing else: none passed or failed.
    summary = done.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"=* *\d+ skipped(, \d+ warnings?)? in [\d.]+s( \([\d:]+\))? *=*", summary), done.stdout
    assert "e2e/README.md" in done.stdout


def test_pointed_at_a_cluster_without_tools_it_fails_loudly(tmp_path):
    done = _run_e2e({CONTEXT_VAR: "kind-missing", "PATH": str(tmp_path)}, "-q")
    assert done.returncode != 0
    assert "is not on PATH" in done.stdout


@pytest.mark.parametrize("env", [
    {},
    {"SHARDSERVE_E2E_OPERATOR_IMAGE": "localhost/shardserve-operator:dev",
     "SHARDSERVE_E2E_RUNTIME_IMAGE": "localhost:5000/shardserve:dev-cpu", "SHARDSERVE_E2E_INSTALL_KUBERAY": "1"},
], ids=["chart-images", "local-images-and-kuberay"])
def test_e2e_installs_the_chart_with_values_helm_accepts(env, monkeypatch):
    for key in [k for k in os.environ if k.startswith("SHARDSERVE_E2E_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv(CONTEXT_VAR, "kind-e2e")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    config = Config.from_env()
    values = config.helm_values()
    assert [f for f in lint_chart(values) if f[0] == "ERROR"] == []
    objects, _ = render_chart(values, namespace=config.release_namespace, release=config.release)
    (deployment,) = [o for o in objects if o["kind"] == "Deployment"]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    env_vars = {e["name"]: e.get("value") for e in container["env"]}
    assert env_vars["SHARDSERVE_NAMESPACES"] == config.namespace
    if config.runtime_image:
        assert env_vars["SHARDSERVE_DEFAULT_IMAGE"] == config.runtime_image
        assert container["image"] == config.operator_image
    policies = [o for o in objects if o["kind"] == "NetworkPolicy"]
    assert [p["metadata"]["namespace"] for p in policies] == [config.namespace]


# ---------------------------------------------------------------- the cases (cluster review #20)

def test_the_suite_runs_the_cases_that_catch_the_reviewed_defects(without_a_cluster):
    done = without_a_cluster
    assert done.returncode == 0, done.stdout + done.stderr
    for case in (
        "test_every_ray_group_has_cpus_the_autoscaler_can_read",  # review #1
        "test_kubectl_scale_adds_and_removes_a_worker_pod",  # #2: bounds on the RayCluster, pods, readyReplicas
        "test_serve_only_change_replaces_every_replica_on_the_same_cluster",  # #8: Ready only once it serves
        "test_cluster_change_rolls_out_a_new_raycluster",  # #8, #12
        "test_pause_deletes_the_rayservice_and_every_ray_pod",  # #6
        "test_cpu_autoscaling_adds_a_replica_under_load_and_removes_it_after",  # #2 for autoscaling
        "test_resume_after_pause_serves_again",
        "test_api_server_rejects_invalid_specs[kuberay-port]",  # #4
    ):
        assert f"e2e/test_lifecycle.py::{case}" in done.stdout, case


def _md(doc: dict):
    return parse_deployment(copy.deepcopy(doc))


def test_the_edits_it_rolls_out_cost_what_the_tests_expect():
    """The lifecycle test waits on the same RayCluster or on a new one; compute_change_cost must agree."""
    tiny = build_tiny()
    scaled = build_tiny(replicas=2)
    assert compute_change_cost(_md(tiny), _md(scaled)).cost is Cost.IN_PLACE
    serve_only = merge(tiny, {"spec": REPLICA_RESTART_EDIT})
    assert compute_change_cost(_md(tiny), _md(serve_only)).cost is Cost.REPLICA_RESTART
    new_cluster = merge(serve_only, {"spec": NEW_CLUSTER_EDIT})
    assert compute_change_cost(_md(serve_only), _md(new_cluster)).cost is Cost.NEW_CLUSTER
    paused = merge(new_cluster, {"spec": {"replicas": 0}})
    assert compute_change_cost(_md(new_cluster), _md(paused)).cost is Cost.PAUSE
    assert compute_change_cost(_md(paused), _md(new_cluster)).cost is Cost.RESUME


def test_the_autoscaled_deployment_is_valid_and_bounded_as_the_test_expects():
    md = _md(build_tiny_autoscaled())
    assert md.spec.replicas is None and md.spec.engine.max_num_seqs is not None
    rayservice = by_kind(render_children(md))["RayService"]
    cluster = {"spec": rayservice["spec"]["rayClusterConfig"]}
    assert read_worker_bounds(cluster) == [("workers", AUTOSCALING["minReplicas"], AUTOSCALING["maxReplicas"])]


# ---------------------------------------------------------------- its readings of KubeRay and Ray

def _as_raycluster(rayservice: dict) -> dict:
    """The RayCluster KubeRay would create for a rendered RayService (the spec, copied)."""
    return {"apiVersion": "ray.io/v1", "kind": "RayCluster",
            "metadata": {"name": "c", "namespace": "ns"}, "spec": copy.deepcopy(rayservice["spec"]["rayClusterConfig"])}


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_rendered_group_has_cpus_by_the_suites_reading_and_by_rays(case):
    from ray.autoscaler._private.kuberay.autoscaling_config import _derive_autoscaling_config_from_ray_cr

    from shardserve.api.validation import load_file

    raycluster = _as_raycluster(by_kind(render_children(load_file(CASES[case])))["RayService"])
    assert find_groups_without_cpus(raycluster) == []
    _derive_autoscaling_config_from_ray_cr(raycluster)  # what the autoscaler sidecar runs; raises without CPUs


def test_a_gpu_group_without_a_cpu_count_is_caught_as_ray_would():
    """The case kind cannot run (review #1): Ray's autoscaler raises, and the suite's reading flags it."""
    from ray.autoscaler._private.kuberay.autoscaling_config import _derive_autoscaling_config_from_ray_cr

    from shardserve.api.validation import load_file

    raycluster = _as_raycluster(by_kind(render_children(load_file(CASES["llama-70b-tp4-pp2"])))["RayService"])
    group = raycluster["spec"]["workerGroupSpecs"][0]
    group["resources"].pop("CPU")
    for kind in ("requests", "limits"):
        group["template"]["spec"]["containers"][0].get("resources", {}).get(kind, {}).pop("cpu", None)
    assert find_groups_without_cpus(raycluster) == ["workers"]
    with pytest.raises(ValueError, match="failed to detect `CPU`"):
        _derive_autoscaling_config_from_ray_cr(raycluster)


def _rayservice(generation=2, observed=2, upgrading=False, active="a", pending=""):
    conditions = [{"type": "Ready", "status": "True"},
                  {"type": "UpgradeInProgress", "status": "True" if upgrading else "False"}]
    return {"metadata": {"generation": generation},
            "status": {"observedGeneration": observed, "conditions": conditions,
                       "activeServiceStatus": {"rayClusterName": active},
                       "pendingServiceStatus": {"rayClusterName": pending}}}


@pytest.mark.parametrize("rayservice, says", [
    (_rayservice(), ""),
    (None, "there is no RayService"),
    (_rayservice(observed=1), "observed generation 1"),
    (_rayservice(upgrading=True, pending="b"), "UpgradeInProgress=True"),
    (_rayservice(pending="b"), "RayCluster b is pending"),
    (_rayservice(active=""), "no active RayCluster"),
], ids=["rolled-out", "missing", "not-observed", "upgrading", "pending", "no-active"])
def test_the_suites_reading_of_a_rollout(rayservice, says):
    described = describe_rollout(rayservice)
    assert (described == "") if not says else (says in described)


def test_json_after_log_lines():
    assert parse_json_output('2026-01-01 INFO [x] started\n[{"name": "a"}]\n', "[") == [{"name": "a"}]
    assert parse_json_output('warning {oops\n{"object": "chat.completion"}') == {"object": "chat.completion"}


def test_the_readme_asks_for_the_kuberay_the_render_needs():
    readme = (ROOT / "e2e" / "README.md").read_text()
    assert f"KubeRay {MIN_KUBERAY_VERSION_TEXT} or later" in readme
    assert "1.4 or later" not in readme
