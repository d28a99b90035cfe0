"""One ModelDeployment's life on a real cluster, through the installed chart.

helm install -> the operator leads on its Lease -> admission rejects bad specs
(CEL) -> apply tiny-cpu -> Ready -> /v1/chat/completions through the Service
-> every Ray group has a CPU count Ray's autoscaler can read -> kubectl scale
1->2->1, checked on the RayCluster and its pods -> a Serve-only change (same
cluster, every replica replaced) -> a change that needs a new RayCluster ->
pause (replicas 0) -> a second deployment autoscales on load and back ->
resume -> delete, and everything it created is gone.

The tests run in file order and share the deployment `tiny`. "Ready at
generation N" is checked against KubeRay's own status each time: a
ModelDeployment that says so while KubeRay still rolls out fails the test.
"""

from __future__ import annotations

import json
import time
from typing import Any, Optional

import pytest
import yaml

from cluster import (
    AUTOSCALING,
    LOAD_CLIENTS,
    NEW_CLUSTER_EDIT,
    REPLICA_RESTART_EDIT,
    TINY,
    TINY_AUTOSCALED,
    Cluster,
    Config,
    build_tiny,
    build_tiny_autoscaled,
    describe_rollout,
    find_condition,
    find_groups_without_cpus,
    is_pod_ready,
    live_pods,
    parse_json_output,
    read_cluster_names,
    read_worker_bounds,
    wait_for,
)

pytestmark = pytest.mark.e2e

NAME = TINY
SELECTOR = f"shardserve.dev/model-deployment={NAME}"
PORT = 8000


def md(cluster: Cluster, config: Config, name: str = NAME) -> dict:
    obj = cluster.get("modeldeployment", name, config.namespace)
    assert obj is not None, f"the ModelDeployment {name} is gone"
    return obj


def status_of(cluster: Cluster, config: Config, name: str = NAME) -> dict:
    return md(cluster, config, name).get("status") or {}


def wait_serving(cluster: Cluster, config: Config, generation: int, name: str = NAME,
                 seen: Optional[list[dict]] = None) -> dict:
    """Waits for Ready=True at `generation`, and fails at once if KubeRay disagrees.

    Ready at a generation must mean that generation serves: the RayService's
    status.observedGeneration equals its generation and no upgrade is under
    way. Every status read at `generation` goes to `seen`.
    """
    def ready():
        obj = md(cluster, config, name)
        status = obj.get("status") or {}
        if find_condition(obj, "SpecValid").get("status") == "False":
            pytest.fail(f"spec rejected by the operator: {find_condition(obj, 'SpecValid')}")
        cond = find_condition(obj, "Ready")
        if status.get("observedGeneration") != generation or cond.get("observedGeneration", generation) != generation:
            return None
        if seen is not None:
            seen.append({"ready": cond.get("status"), "reason": cond.get("reason"),
                         "progressing": find_condition(obj, "Progressing").get("status")})
        if cond.get("status") != "True":
            return None
        behind = describe_rollout(cluster.get("rayservice", name, config.namespace))
        if behind:
            pytest.fail(f"{name} reports Ready at generation {generation}, but {behind}")
        return obj
    return wait_for(ready, config.ready_timeout, f"{name} Ready at generation {generation}", interval=5)


def run_in_cluster(cluster: Cluster, config: Config, name: str, command: list[str], timeout: float = 180) -> str:
    """Runs a short-lived pod in the test namespace and returns its output."""
    done = cluster.kubectl("run", name, "-n", config.namespace, "--image", config.curl_image, "--restart=Never",
                           "--rm", "-i", "--quiet", "--pod-running-timeout=3m", "--command", "--", *command,
                           check=False, timeout=timeout)
    return done.stdout + ("" if done.returncode == 0 else f"\n(exit {done.returncode}) {done.stderr}")


def chat(cluster: Cluster, config: Config, name: str = NAME) -> dict:
    body = json.dumps({"model": "tiny", "messages": [{"role": "user", "content": "Say hello"}], "max_tokens": 8})
    url = f"http://{name}.{config.namespace}.svc:{PORT}/v1/chat/completions"
    out = run_in_cluster(cluster, config, f"e2e-chat-{int(time.time()) % 100000}",
                         ["curl", "-sS", "--max-time", "120", "-H", "Content-Type: application/json", "-d", body, url])
    reply = parse_json_output(out)
    assert reply.get("object") == "chat.completion", reply
    assert isinstance(reply["choices"][0]["message"]["content"], str)
    assert reply["usage"]["completion_tokens"] >= 1
    return reply


def active_cluster(cluster: Cluster, config: Config, name: str = NAME) -> str:
    active, _ = read_cluster_names(cluster.get("rayservice", name, config.namespace))
    assert active, f"the RayService {name} reports no active RayCluster"
    return active


def worker_pods(cluster: Cluster, config: Config, raycluster: str) -> list[dict]:
    return live_pods(cluster.items("pods", config.namespace, f"ray.io/cluster={raycluster},ray.io/node-type=worker"))


def ready_workers(cluster: Cluster, config: Config, raycluster: str) -> int:
    return sum(is_pod_ready(p) for p in worker_pods(cluster, config, raycluster))


def head_pod(cluster: Cluster, config: Config, raycluster: str) -> dict:
    (head,) = live_pods(cluster.items("pods", config.namespace, f"ray.io/cluster={raycluster},ray.io/node-type=head"))
    return head


def serve_replicas(cluster: Cluster, config: Config, raycluster: str) -> set[str]:
    """Names of the Serve replica actors alive in a Ray cluster, from Ray's state API in the head pod."""
    head = head_pod(cluster, config, raycluster)["metadata"]["name"]
    done = cluster.kubectl("exec", head, "-n", config.namespace, "-c", "ray-head", "--", "ray", "list", "actors",
                           "--filter", "state=ALIVE", "--limit", "1000", "--format", "json", timeout=120)
    actors = parse_json_output(done.stdout, "[")
    return {a.get("name") or "" for a in actors if str(a.get("class_name", "")).startswith("ServeReplica:")}


def patch_spec(cluster: Cluster, config: Config, changes: dict, name: str = NAME) -> int:
    cluster.kubectl("patch", "md", name, "-n", config.namespace, "--type", "merge", "-p",
                    json.dumps({"spec": changes}))
    return md(cluster, config, name)["metadata"]["generation"]


def scale(cluster: Cluster, config: Config, replicas: int, name: str = NAME) -> int:
    cluster.kubectl("scale", f"md/{name}", "-n", config.namespace, f"--replicas={replicas}")
    obj = md(cluster, config, name)
    assert obj["spec"]["replicas"] == replicas
    return obj["metadata"]["generation"]


def wait_counts(cluster: Cluster, config: Config, replicas: int, name: str = NAME) -> None:
    def counted():
        status = status_of(cluster, config, name)
        return status.get("replicas") == replicas and status.get("readyReplicas") == replicas
    wait_for(counted, config.ready_timeout, f"{name} status.replicas and status.readyReplicas {replicas}", interval=5)


def wait_bounds(cluster: Cluster, config: Config, raycluster: str, low: int, high: int) -> None:
    """The RayCluster itself carries the bounds: KubeRay never copies them from the RayService."""
    wait_for(lambda: read_worker_bounds(cluster.get("raycluster", raycluster, config.namespace) or {})
             == [("workers", low, high)], 120, f"RayCluster {raycluster}'s worker group at min {low}, max {high}")


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
    ({"serving": {"port": 8080}}, "spec.serving.port is taken in every Ray pod"),
    ({"parallelism": {"tensors": 2}}, "tensors"),
], ids=["replicas-and-autoscaling", "tensor-over-node", "gpu-type-on-cpu", "negative-replicas", "kuberay-port",
        "unknown-field"])
def test_api_server_rejects_invalid_specs(cluster, release, changes, message):
    done = cluster.apply(yaml.safe_dump(build_tiny(NAME, **changes)), release.namespace, "--dry-run=server")
    assert done.returncode != 0 and message in done.stderr, done.stderr


def test_tiny_becomes_ready(cluster, release):
    done = cluster.apply(yaml.safe_dump(build_tiny(NAME)), release.namespace)
    assert done.returncode == 0, done.stderr
    started = time.monotonic()
    obj = wait_serving(cluster, release, generation=1)
    print(f"\n{NAME} Ready after {time.monotonic() - started:.0f}s")
    status = obj["status"]
    assert status["replicas"] == 1 and status["readyReplicas"] >= 1
    assert status["endpoint"] == f"http://{NAME}.{release.namespace}.svc:{PORT}/v1"
    assert status["selector"] == f"{SELECTOR},ray.io/node-type=worker"
    table = cluster.kubectl("get", "md", NAME, "-n", release.namespace).stdout
    assert "READY" in table.splitlines()[0] and "True" in table.splitlines()[1]
    rayservice = cluster.get("rayservice", NAME, release.namespace)
    image = rayservice["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]["image"]
    if release.runtime_image:
        assert image == release.runtime_image


def test_chat_completion_through_the_service(cluster, release):
    chat(cluster, release)


def test_network_policy_keeps_ray_ports_inside(cluster, release):
    if not release.check_network_policy:
        pytest.skip("set SHARDSERVE_E2E_CHECK_NETWORK_POLICY=1 on a cluster whose CNI enforces NetworkPolicy")
    head = f"http://{NAME}-head-svc.{release.namespace}.svc:8265/api/version"
    out = run_in_cluster(cluster, release, "e2e-dashboard", ["curl", "-sS", "--max-time", "10", head])
    assert "exit" in out and "ray_version" not in out, f"the dashboard answered an outside pod: {out}"


def test_every_ray_group_has_cpus_the_autoscaler_can_read(cluster, release):
    """Without one, Ray's autoscaler sidecar raises at start and crash-loops the head pod.

    The render declares CPUs for every group, GPU specs without
    resources.cpu included; kind has no GPUs, so the rule is checked on the
    live RayCluster, with Ray's own reading of it.
    """
    from ray.autoscaler._private.kuberay.autoscaling_config import _derive_autoscaling_config_from_ray_cr

    raycluster = cluster.get("raycluster", active_cluster(cluster, release), release.namespace)
    assert find_groups_without_cpus(raycluster) == []
    node_types = _derive_autoscaling_config_from_ray_cr(raycluster)["available_node_types"]
    assert all(isinstance(t["resources"].get("CPU"), int) for t in node_types.values()), node_types
    statuses = {c["name"]: c for c in head_pod(cluster, release, raycluster["metadata"]["name"])["status"]
                .get("containerStatuses", [])}
    assert statuses.get("autoscaler", {}).get("ready") is True, statuses.get("autoscaler")


def test_kubectl_scale_adds_and_removes_a_worker_pod(cluster, release):
    ns = release.namespace
    raycluster = active_cluster(cluster, release)
    (first,) = worker_pods(cluster, release, raycluster)  # tiny: one pod per replica
    replicas_before = serve_replicas(cluster, release, raycluster)

    generation = scale(cluster, release, 2)
    wait_bounds(cluster, release, raycluster, 2, 2)
    wait_for(lambda: ready_workers(cluster, release, raycluster) == 2, release.ready_timeout,
             f"2 ready worker pods in RayCluster {raycluster}", interval=5)
    wait_serving(cluster, release, generation)
    wait_counts(cluster, release, 2)
    # In place: the same RayCluster, the first worker pod and its replica still running.
    assert active_cluster(cluster, release) == raycluster
    assert first["metadata"]["uid"] in {p["metadata"]["uid"] for p in worker_pods(cluster, release, raycluster)}
    replicas = serve_replicas(cluster, release, raycluster)
    assert len(replicas) == 2 and replicas_before <= replicas, (replicas_before, replicas)
    scale_status = json.loads(cluster.kubectl("get", "--raw",
                                              f"/apis/shardserve.dev/v1alpha1/namespaces/{ns}"
                                              f"/modeldeployments/{NAME}/scale").stdout)
    assert scale_status["spec"]["replicas"] == 2 and scale_status["status"]["selector"].startswith(SELECTOR)
    chat(cluster, release)

    generation = scale(cluster, release, 1)
    wait_bounds(cluster, release, raycluster, 1, 1)
    wait_for(lambda: len(worker_pods(cluster, release, raycluster)) == 1, 600,
             f"RayCluster {raycluster} back to one worker pod", interval=5)
    wait_serving(cluster, release, generation)
    wait_counts(cluster, release, 1)
    assert active_cluster(cluster, release) == raycluster


def test_serve_only_change_replaces_every_replica_on_the_same_cluster(cluster, release):
    """A change of Serve's code version: new replicas on the same pods, and Ready only once they serve."""
    raycluster = active_cluster(cluster, release)
    pods = {p["metadata"]["uid"] for p in worker_pods(cluster, release, raycluster)}
    replicas = serve_replicas(cluster, release, raycluster)
    generation = patch_spec(cluster, release, REPLICA_RESTART_EDIT)
    wait_serving(cluster, release, generation)
    rayservice = cluster.get("rayservice", NAME, release.namespace)
    assert "maxOngoingRequests: 32" in rayservice["spec"]["serveConfigV2"]
    assert read_cluster_names(rayservice)[0] == raycluster, "a Serve-only change started a new RayCluster"
    assert {p["metadata"]["uid"] for p in worker_pods(cluster, release, raycluster)} == pods
    now = serve_replicas(cluster, release, raycluster)
    assert now and not (now & replicas), f"Ready while replicas of the previous version run: {now & replicas}"
    chat(cluster, release)


def test_cluster_change_rolls_out_a_new_raycluster(cluster, release):
    """Serve's HTTP options change: KubeRay starts a second RayCluster and switches once it serves."""
    ns = release.namespace
    before = active_cluster(cluster, release)
    generation = patch_spec(cluster, release, NEW_CLUSTER_EDIT)
    seen: list[dict[str, Any]] = []
    wait_serving(cluster, release, generation, seen=seen)
    # Ready waited for the new cluster: Progressing was True at this generation first.
    assert any(s["progressing"] == "True" and s["ready"] != "True" for s in seen), seen
    rayservice = cluster.get("rayservice", NAME, ns)
    after = read_cluster_names(rayservice)[0]
    assert after and after != before, f"still on RayCluster {before}"
    assert "request_timeout_s: 155.0" in rayservice["spec"]["serveConfigV2"]
    chat(cluster, release)
    delay = int(rayservice["spec"].get("rayClusterDeletionDelaySeconds", 60))
    wait_for(lambda: cluster.get("raycluster", before, ns) is None, delay + 300,
             f"the previous RayCluster {before} deleted {delay}s after the switch", interval=10)


def test_pause_deletes_the_rayservice_and_every_ray_pod(cluster, release):
    ns = release.namespace
    generation = scale(cluster, release, 0)

    def remaining() -> list[str]:
        return cluster.kubectl("get", "rayservices,rayclusters,pods", "-n", ns, "-l", SELECTOR,
                               "-o", "name").stdout.split()

    wait_for(lambda: remaining() == [], 600, f"{NAME}'s RayService, RayClusters and pods deleted", interval=5)

    def paused():
        obj = md(cluster, release)
        ready = find_condition(obj, "Ready")
        at = (obj.get("status") or {}).get("observedGeneration") == generation
        return obj if at and (ready.get("status"), ready.get("reason")) == ("False", "Paused") else None

    obj = wait_for(paused, 120, f"{NAME} Ready=False, reason Paused, at generation {generation}")
    assert obj["status"].get("replicas", 0) == 0 and obj["status"].get("readyReplicas", 0) == 0
    assert cluster.get("service", NAME, ns) is not None, "the Service goes with a pause"


def start_load(cluster: Cluster, config: Config, pod: str, url: str) -> None:
    """A pod running LOAD_CLIENTS closed-loop completion requests, one HTTP code per line on its log."""
    body = json.dumps({"model": "tiny", "prompt": "load", "max_tokens": 48, "ignore_eos": True})
    script = (f"for i in $(seq {LOAD_CLIENTS}); do (while true; do curl -s -o /dev/null --max-time 300 "
              "-w '%{http_code}\\n' -H 'Content-Type: application/json' -d \"$BODY\" \"$URL\"; done) & done; wait")
    cluster.kubectl("run", pod, "-n", config.namespace, "--image", config.curl_image, "--restart=Never",
                    "--env", f"BODY={body}", "--env", f"URL={url}", "--command", "--", "sh", "-c", script)
    wait_for(lambda: ((cluster.get("pod", pod, config.namespace) or {}).get("status") or {}).get("phase") == "Running",
             180, f"pod {pod} running")


def stop_load(cluster: Cluster, config: Config, pod: str) -> list[str]:
    """The HTTP codes the load pod saw; the pod is deleted."""
    codes = cluster.kubectl("logs", pod, "-n", config.namespace, check=False).stdout.split()
    cluster.kubectl("delete", "pod", pod, "-n", config.namespace, "--now", "--wait=true", check=False)
    return codes


def test_cpu_autoscaling_adds_a_replica_under_load_and_removes_it_after(cluster, release):
    ns, name = release.namespace, TINY_AUTOSCALED
    done = cluster.apply(yaml.safe_dump(build_tiny_autoscaled()), ns)
    assert done.returncode == 0, done.stderr
    load = "e2e-load"
    try:
        wait_serving(cluster, release, 1, name=name)
        raycluster = active_cluster(cluster, release, name)
        assert read_worker_bounds(cluster.get("raycluster", raycluster, ns)) == [
            ("workers", AUTOSCALING["minReplicas"], AUTOSCALING["maxReplicas"])]
        assert find_groups_without_cpus(cluster.get("raycluster", raycluster, ns)) == []
        assert ready_workers(cluster, release, raycluster) == 1

        start_load(cluster, release, load, f"http://{name}.{ns}.svc:{PORT}/v1/completions")
        try:
            wait_for(lambda: status_of(cluster, release, name).get("replicas") == 2, 300,
                     f"{name} status.replicas 2 under load", interval=5)
            wait_for(lambda: ready_workers(cluster, release, raycluster) == 2, release.ready_timeout,
                     f"a second ready worker pod in RayCluster {raycluster}", interval=5)
            wait_for(lambda: status_of(cluster, release, name).get("readyReplicas") == 2, release.ready_timeout,
                     f"{name} status.readyReplicas 2", interval=5)
        finally:
            codes = stop_load(cluster, release, load)
        assert codes and set(codes) == {"200"}, f"the load saw {sorted(set(codes))} over {len(codes)} requests"

        wait_for(lambda: status_of(cluster, release, name).get("replicas") == 1, 600,
                 f"{name} status.replicas back to 1", interval=5)
        wait_for(lambda: len(worker_pods(cluster, release, raycluster)) == 1, 600,
                 f"RayCluster {raycluster} back to one worker pod", interval=5)
        assert active_cluster(cluster, release, name) == raycluster
    finally:
        stop_load(cluster, release, load)
        cluster.kubectl("delete", "md", name, "-n", ns, "--wait=true", "--timeout=5m", check=False)
        wait_for(lambda: cluster.kubectl("get", "rayservices,rayclusters,pods", "-n", ns, "-l",
                                         f"shardserve.dev/model-deployment={name}", "-o", "name").stdout.split() == [],
                 600, f"everything {name} created deleted", interval=5)


def test_resume_after_pause_serves_again(cluster, release):
    generation = scale(cluster, release, 1)
    wait_serving(cluster, release, generation)
    assert status_of(cluster, release)["replicas"] == 1
    chat(cluster, release)


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
