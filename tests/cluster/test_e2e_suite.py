"""The e2e suite itself (it needs a cluster to run): it skips saying why, and installs the chart with valid values."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.cluster.chart import ROOT, lint_chart, render_chart

sys.path.insert(0, str(ROOT / "e2e"))

from cluster import CONTEXT_VAR, Config  # noqa: E402


def _run_e2e(env_changes: dict[str, str]) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHARDSERVE_E2E_")}
    env.update(env_changes)
    return subprocess.run([sys.executable, "-m", "pytest", "e2e", "-q", "-p", "no:cacheprovider"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=120)


def test_without_a_cluster_every_test_skips_and_says_why():
    done = _run_e2e({})
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{CONTEXT_VAR} is not set" in done.stdout + done.stderr
    assert " skipped" in done.stdout and " passed" not in done.stdout and "failed" not in done.stdout
    assert "e2e/README.md" in done.stdout


def test_pointed_at_a_cluster_without_tools_it_fails_loudly(tmp_path):
    done = _run_e2e({CONTEXT_VAR: "kind-missing", "PATH": str(tmp_path)})
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
