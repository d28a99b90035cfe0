"""The e2e suite runs only when pointed at a cluster: SHARDSERVE_E2E_KUBECONTEXT=<kubeconfig context>.

Without it every test is skipped and the reason is printed in the header and
the summary. With it, a missing kubectl/helm or an unreachable cluster fails
loudly: the suite was asked to run.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cluster import CHART, CONTEXT_VAR, Cluster, CommandFailed, Config, missing_tools, wait_for  # noqa: E402

SKIP_REASON = (f"e2e: {CONTEXT_VAR} is not set; set it to a kubeconfig context (a kind cluster with KubeRay, "
               "or a GPU cluster) to run this suite against it; see e2e/README.md")


def pytest_report_header(config):
    cfg = Config.from_env()
    if cfg is None:
        return [SKIP_REASON]
    return [f"e2e: context {cfg.context!r}, namespace {cfg.namespace!r}, release "
            f"{cfg.release!r} in {cfg.release_namespace!r}"]


def pytest_collection_modifyitems(config, items):
    if Config.from_env() is not None:
        return
    print(f"\n{SKIP_REASON}\n", file=sys.stderr)
    skip = pytest.mark.skip(reason=SKIP_REASON)
    for item in items:
        item.add_marker(skip)


@pytest.fixture(scope="session")
def config() -> Config:
    cfg = Config.from_env()
    assert cfg is not None
    missing = missing_tools()
    if missing:
        pytest.fail(f"{CONTEXT_VAR} is set but {', '.join(missing)} is not on PATH")
    return cfg


@pytest.fixture(scope="session")
def cluster(config) -> Cluster:
    kube = Cluster(config)
    try:
        kube.kubectl("version", "-o", "json", timeout=30)
    except CommandFailed as err:
        pytest.fail(f"cannot reach the cluster of context {config.context!r}: {err}")
    if kube.get("crd", "rayservices.ray.io") is None and not config.install_kuberay:
        pytest.fail("the cluster has no RayService CRD: install KubeRay first, or set "
                    "SHARDSERVE_E2E_INSTALL_KUBERAY=1 to install it with the chart (see e2e/README.md)")
    return kube


@pytest.fixture(scope="session")
def release(cluster, config, tmp_path_factory):
    """The chart installed with helm for the test namespace; uninstalled afterwards, and checked gone."""
    crd_existed = cluster.get("crd", "modeldeployments.shardserve.dev") is not None
    if not config.kuberay_namespace and not config.install_kuberay:
        pods = json.loads(cluster.kubectl("get", "pods", "-A", "-l", "app.kubernetes.io/name=kuberay-operator",
                                          "-o", "json").stdout)
        found = sorted({p["metadata"]["namespace"] for p in pods["items"]})
        if len(found) != 1:
            pytest.fail(f"found the KubeRay operator in {found or 'no namespace'}; set SHARDSERVE_E2E_KUBERAY_NAMESPACE")
        config = dataclasses.replace(config, kuberay_namespace=found[0])
    cluster.kubectl("create", "namespace", config.namespace)
    # Helm checks every dependency in Chart.yaml is present, even a disabled
    # one: fetch the KubeRay chart (network) unless charts/ already has it.
    if not list((CHART / "charts").glob("kuberay-operator-*.tgz")):
        cluster.helm("dependency", "build", str(CHART))
    values = tmp_path_factory.mktemp("helm") / "values.json"
    values.write_text(json.dumps(config.helm_values()))
    cluster.helm("install", config.release, str(CHART), "-n", config.release_namespace, "--create-namespace",
                 "--wait", "--timeout", "10m", "-f", str(values))
    yield config
    if config.keep:
        print(f"\nSHARDSERVE_E2E_KEEP: left release {config.release} and namespace {config.namespace}")
        return
    cluster.kubectl("delete", "namespace", config.namespace, "--wait=true", "--timeout=10m", check=False)
    cluster.helm("uninstall", config.release, "-n", config.release_namespace, "--wait", "--timeout", "5m")
    fullname = config.release if "shardserve" in config.release else f"{config.release}-shardserve"
    gone = [("clusterrole", fullname, None), ("clusterrolebinding", fullname, None),
            ("deployment", fullname, config.release_namespace), ("serviceaccount", fullname, config.release_namespace)]
    for kind, name, namespace in gone:
        # wait_for calls the lambda within this iteration only.
        wait_for(lambda: cluster.get(kind, name, namespace) is None, 120,  # noqa: B023
                 f"{kind} {name} removed by helm uninstall")
    # The leader Lease is the operator's own, not Helm's: it goes with the namespace.
    cluster.kubectl("delete", "namespace", config.release_namespace, "--wait=true", "--timeout=5m", check=False)
    if not crd_existed:
        cluster.kubectl("delete", "crd", "modeldeployments.shardserve.dev", "--wait=true", check=False)
