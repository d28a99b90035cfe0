"""One ModelDeployment's life on a real cluster, through the installed chart.

helm install -> the operator leads on its Lease -> apply tiny-cpu -> Ready ->
/v1/chat/completions through the Service -> kubectl scale -> a spec change ->
admission rejects bad specs (CEL) -> delete, and everything it created is gone.
The tests run in file order and share the deployment.
"""

from __future__ import annotations

import json
import time

import pytest
import yaml

from cluster import EXAMPLES, Cluster, Config, wait_for

pytestmark = pytest.mark.e2e

NAME = "tiny"
SELECTOR = f"shardserve.dev/model-deployment={NAME}"


def tiny_manifest(config: Config, **spec_changes) -> str:
    doc = yaml.safe_load((EXAMPLES / "tiny-cpu.yaml").read_text())
    doc["metadata"] = {"name": NAME}
    doc["spec"].update(spec_changes)
    return yaml.safe_dump(doc)


def md(cluster: Cluster, config: Config) -> dict:
    obj = cluster.get("modeldeployment", NAME, config.namespace)
    assert obj is not None, "the ModelDeployment is gone"
    return obj


def condition(obj: dict, type_: str) -> dict:
    for cond in (obj.get("status") or {}).get("conditions", []):
        if cond["type"] == type_:
            return cond
    return {}


def wait_ready(cluster: Cluster, config: Config, generation: int) -> dict:
    def ready():
        obj = md(cluster, config)
        status = obj.get("status") or {}
        if condition(obj, "SpecValid").get("status") == "False":
            pytest.fail(f"spec rejected by the operator: {condition(obj, 'SpecValid')}")
        if status.get("observedGeneration") == generation and condition(obj, "Ready").get("status") == "True":
            return obj
        return None
    return wait_for(ready, config.ready_timeout, f"{NAME} Ready at generation {generation}", interval=5)


def run_in_cluster(cluster: Cluster, config: Config, name: str, command: list[str], timeout: float = 180) -> str:
    """Runs a short-lived pod in the test namespace and returns its output."""
    done = cluster.kubectl("run", name, "-n", config.namespace, "--image", config.curl_image, "--restart=Never",
                           "--rm", "-i", "--quiet", "--pod-running-timeout=3m", "--command", "--", *command,
                           check=False, timeout=timeout)
    return done.stdout + ("" if done.returncode == 0 else f"\n(exit {done.returncode}) {done.stderr}")


def test_operator_runs_and_one_replica_leads(cluster, release):
    deployment = cluster.get("deployment", release.release, release.release_namespace)
    assert deployment["status"].get("readyReplicas") == 2, deployment["status"]
    lease = wait_for(lambda: (cluster.get("lease", release.release, release.release_namespace) or {})
                     .get("spec", {}).get("holderIdentity"), 60, "a leader")
    pods = cluster.get("pods", namespace=release.release_namespace,
                       selector=f"app.kubernetes.io/instance={release.release}")
    assert lease in {p["metadata"]["name"] for p in pods["items"]}


def test_crd_is_installed_with_short_name_and_scale(cluster, release):
    crd = cluster.get("crd", "modeldeployments.shardserve.dev")
    assert crd["spec"]["names"]["shortNames"] == ["md"]
    assert crd["spec"]["versions"][0]["subresources"]["scale"]["specReplicasPath"] == ".spec.replicas"
    established = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
    assert established.get("Established") == "True"


@pytest.mark.parametrize("changes, message", [
    ({"autoscaling": {"minReplicas": 1, "maxReplicas": 2}}, "mutually exclusive"),
    ({"parallelism": {"tensor": 4}}, "spec.parallelism.tensor must be <= spec.resources.acceleratorsPerNode"),
    ({"resources": {"accelerator": "cpu", "acceleratorsPerNode": 2, "acceleratorType": "H100"}},
     "acceleratorType applies to GPUs only"),
    ({"replicas": -1}, "spec.replicas"),
    ({"parallelism": {"tensors": 2}}, "tensors"),
], ids=["replicas-and-autoscaling", "tensor-over-node", "gpu-type-on-cpu", "negative-replicas", "unknown-field"])
def test_api_server_rejects_invalid_specs(cluster, release, changes, message):
    done = cluster.apply(tiny_manifest(release, **changes), release.namespace, "--dry-run=server")
    assert done.returncode != 0 and message in done.stderr, done.stderr


def test_tiny_becomes_ready(cluster, release):
    done = cluster.apply(tiny_manifest(release), release.namespace)
    assert done.returncode == 0, done.stderr
    started = time.monotonic()
    obj = wait_ready(cluster, release, generation=1)
    print(f"\n{NAME} Ready after {time.monotonic() - started:.0f}s")
    status = obj["status"]
    assert status["replicas"] == 1 and status["readyReplicas"] >= 1
    assert status["endpoint"] == f"http://{NAME}.{release.namespace}.svc:8000/v1"
    assert status["selector"] == f"{SELECTOR},ray.io/node-type=worker"
    table = cluster.kubectl("get", "md", NAME, "-n", release.namespace).stdout
    assert "READY" in table.splitlines()[0] and "True" in table.splitlines()[1]
    rayservice = cluster.get("rayservice", NAME, release.namespace)
    image = rayservice["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]["image"]
    if release.runtime_image:
        assert image == release.runtime_image


def test_chat_completion_through_the_service(cluster, release):
    body = json.dumps({"model": "tiny", "messages": [{"role": "user", "content": "Say hello"}], "max_tokens": 8})
    url = f"http://{NAME}.{release.namespace}.svc:8000/v1/chat/completions"
    out = run_in_cluster(cluster, release, "e2e-chat", ["curl", "-sS", "--max-time", "120", "-H",
                                                         "Content-Type: application/json", "-d", body, url])
    reply = json.loads(out[out.index("{"):])
    assert reply["object"] == "chat.completion", reply
    assert isinstance(reply["choices"][0]["message"]["content"], str)
    assert reply["usage"]["completion_tokens"] >= 1


def test_network_policy_keeps_ray_ports_inside(cluster, release):
    if not release.check_network_policy:
        pytest.skip("set SHARDSERVE_E2E_CHECK_NETWORK_POLICY=1 on a cluster whose CNI enforces NetworkPolicy")
    head = f"http://{NAME}-head-svc.{release.namespace}.svc:8265/api/version"
    out = run_in_cluster(cluster, release, "e2e-dashboard", ["curl", "-sS", "--max-time", "10", head])
    assert "exit" in out and "ray_version" not in out, f"the dashboard answered an outside pod: {out}"


def test_kubectl_scale_sets_the_replica_count(cluster, release):
    cluster.kubectl("scale", f"md/{NAME}", "-n", release.namespace, "--replicas=2")
    obj = md(cluster, release)
    assert obj["spec"]["replicas"] == 2
    wait_for(lambda: (md(cluster, release).get("status") or {}).get("replicas") == 2, 120, "status.replicas 2")
    group = cluster.get("rayservice", NAME, release.namespace)["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]
    assert (group["replicas"], group["minReplicas"], group["maxReplicas"]) == (2, 2, 2)
    scale = json.loads(cluster.kubectl("get", "--raw",
                                       f"/apis/shardserve.dev/v1alpha1/namespaces/{release.namespace}"
                                       f"/modeldeployments/{NAME}/scale").stdout)
    assert scale["spec"]["replicas"] == 2 and scale["status"]["selector"].startswith(SELECTOR)
    cluster.kubectl("scale", f"md/{NAME}", "-n", release.namespace, "--replicas=1")
    wait_ready(cluster, release, generation=md(cluster, release)["metadata"]["generation"])


def test_spec_change_rolls_out(cluster, release):
    before = cluster.get("rayservice", NAME, release.namespace)
    cluster.kubectl("patch", "md", NAME, "-n", release.namespace, "--type", "merge",
                    "-p", json.dumps({"spec": {"serving": {"maxOngoingRequests": 32}}}))
    generation = md(cluster, release)["metadata"]["generation"]
    wait_ready(cluster, release, generation)
    after = cluster.get("rayservice", NAME, release.namespace)
    assert "maxOngoingRequests: 32" in after["spec"]["serveConfigV2"]
    hash_key = "shardserve.dev/rendered-hash"
    assert after["metadata"]["annotations"][hash_key] != before["metadata"]["annotations"][hash_key]


def test_delete_removes_everything_it_created(cluster, release):
    ns = release.namespace  # the suite's own namespace: everything of these kinds in it came from NAME
    kinds = "rayservices,rayclusters,services,ingresses,pods"

    def remaining() -> list[str]:
        return cluster.kubectl("get", kinds, "-n", ns, "-o", "name").stdout.split()

    before = remaining()
    assert {"rayservice.ray.io/tiny", "service/tiny"} <= set(before), before
    assert any(name.startswith("raycluster.ray.io/") for name in before), before
    assert any(name.startswith("pod/") for name in before), before
    cluster.kubectl("delete", "md", NAME, "-n", ns, "--wait=true", "--timeout=5m")
    wait_for(lambda: remaining() == [], 600, f"everything {NAME} created to be garbage-collected", interval=5)
