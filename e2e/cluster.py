"""kubectl and helm as the e2e suite drives them, and how it reads what KubeRay and Ray report.

The readers below are pure and written from KubeRay's and Ray's documented
fields, not from the operator's code, so the suite checks the operator's
claims (Ready, replica counts) against an independent reading of the cluster.
tests/cluster/test_e2e_suite.py checks them without a cluster.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "charts" / "shardserve"
EXAMPLES = ROOT / "manifests" / "examples"

CONTEXT_VAR = "SHARDSERVE_E2E_KUBECONTEXT"


class CommandFailed(AssertionError):
    """A command the test needed failed; the message carries its output."""


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


@dataclass(frozen=True)
class Config:
    """What the suite reads from its environment (see e2e/README.md)."""

    context: str
    namespace: str
    release_namespace: str
    release: str = "shardserve-e2e"
    operator_image: str = ""  # REPOSITORY:TAG; empty: the chart's default
    runtime_image: str = ""
    install_kuberay: bool = False
    ready_timeout: float = 1200.0
    keep: bool = False
    check_network_policy: bool = False
    curl_image: str = "curlimages/curl:8.11.1"
    kuberay_namespace: str = ""  # where the KubeRay operator runs; found in the cluster when empty

    @classmethod
    def from_env(cls) -> Optional[Config]:
        context = os.environ.get(CONTEXT_VAR, "").strip()
        if not context:
            return None
        suffix = os.environ.get("SHARDSERVE_E2E_SUFFIX") or f"{os.getpid() % 100000}"
        return cls(
            context=context,
            namespace=os.environ.get("SHARDSERVE_E2E_NAMESPACE") or f"shardserve-e2e-{suffix}",
            release_namespace=os.environ.get("SHARDSERVE_E2E_RELEASE_NAMESPACE") or f"shardserve-system-{suffix}",
            operator_image=os.environ.get("SHARDSERVE_E2E_OPERATOR_IMAGE", ""),
            runtime_image=os.environ.get("SHARDSERVE_E2E_RUNTIME_IMAGE", ""),
            install_kuberay=_env_flag("SHARDSERVE_E2E_INSTALL_KUBERAY"),
            ready_timeout=float(os.environ.get("SHARDSERVE_E2E_READY_TIMEOUT", "1200")),
            keep=_env_flag("SHARDSERVE_E2E_KEEP"),
            check_network_policy=_env_flag("SHARDSERVE_E2E_CHECK_NETWORK_POLICY"),
            curl_image=os.environ.get("SHARDSERVE_E2E_CURL_IMAGE", "curlimages/curl:8.11.1"),
            kuberay_namespace=os.environ.get("SHARDSERVE_E2E_KUBERAY_NAMESPACE", ""),
        )

    def helm_values(self) -> dict[str, Any]:
        values: dict[str, Any] = {
            "watchNamespaces": [self.namespace],
            # Two replicas: one leads, one waits on the Lease.
            "replicaCount": 2,
            "logLevel": "DEBUG",
            "kuberay-operator": {"enabled": self.install_kuberay},
        }
        # The Ray NetworkPolicy lets the KubeRay operator reach each Ray dashboard.
        kuberay = self.release_namespace if self.install_kuberay else self.kuberay_namespace
        if kuberay:
            values["networkPolicy"] = {"kuberayOperator": {"namespace": kuberay}}
        for key, image in (("image", self.operator_image), ("runtimeImage", self.runtime_image)):
            if image:
                repository, tag = split_image(image)
                values[key] = {"repository": repository, "tag": tag}
        return values


def split_image(image: str) -> tuple[str, str]:
    """'registry:5000/name:tag' -> ('registry:5000/name', 'tag'); no tag means 'latest'."""
    repository, sep, tag = image.rpartition(":")
    if not sep or "/" in tag:
        return image, "latest"
    return repository, tag


def missing_tools() -> list[str]:
    return [tool for tool in ("kubectl", "helm") if shutil.which(tool) is None]


@dataclass
class Cluster:
    config: Config
    log: list[str] = field(default_factory=list)

    def _run(self, argv: Sequence[str], *, input: Optional[str] = None, check: bool = True,
             timeout: float = 300) -> subprocess.CompletedProcess:
        self.log.append(" ".join(argv))
        done = subprocess.run(list(argv), input=input, capture_output=True, text=True, timeout=timeout)
        if check and done.returncode != 0:
            raise CommandFailed(f"{' '.join(argv)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
        return done

    def kubectl(self, *args: str, input: Optional[str] = None, check: bool = True,
                timeout: float = 300) -> subprocess.CompletedProcess:
        return self._run(["kubectl", "--context", self.config.context, *args], input=input, check=check,
                         timeout=timeout)

    def helm(self, *args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
        return self._run(["helm", "--kube-context", self.config.context, *args], check=check, timeout=timeout)

    def get(self, kind: str, name: Optional[str] = None, namespace: Optional[str] = None,
            selector: Optional[str] = None) -> Optional[dict[str, Any]]:
        """The object (or list) as JSON; None when it does not exist."""
        args = ["get", kind] + ([name] if name else []) + ["-o", "json"]
        if namespace:
            args += ["-n", namespace]
        if selector:
            args += ["-l", selector]
        done = self.kubectl(*args, check=False)
        if done.returncode != 0:
            if "NotFound" in done.stderr or "not found" in done.stderr:
                return None
            raise CommandFailed(f"kubectl {' '.join(args)}: {done.stderr}")
        return json.loads(done.stdout)

    def items(self, kind: str, namespace: str, selector: Optional[str] = None) -> list[dict[str, Any]]:
        """The objects of a kind in a namespace (matching `selector`), as JSON; [] when there are none."""
        return list((self.get(kind, namespace=namespace, selector=selector) or {}).get("items") or ())

    def apply(self, manifest: str, namespace: str, *extra: str) -> subprocess.CompletedProcess:
        return self.kubectl("apply", "--server-side", "-n", namespace, "-f", "-", *extra, input=manifest,
                            check=False)


def wait_for(check: Callable[[], Any], timeout: float, what: str, interval: float = 2.0) -> Any:
    """Polls `check` until it returns something truthy; fails saying what it waited for."""
    deadline = time.monotonic() + timeout
    last_error: Optional[BaseException] = None
    while time.monotonic() < deadline:
        try:
            result = check()
            if result:
                return result
        except CommandFailed as err:
            last_error = err
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}"
                         + (f" (last error: {last_error})" if last_error else ""))


# ---- the deployments the suite applies ----

TINY = "tiny"
TINY_AUTOSCALED = "tiny-auto"

# Spec edits the lifecycle test rolls out, with what they must cost on a
# running cluster (docs/cluster.md; test_e2e_suite checks these against
# compute_change_cost). Serve's code version changes: every replica is
# replaced on the same RayCluster.
REPLICA_RESTART_EDIT = {"serving": {"maxOngoingRequests": 32}}
# Serve's HTTP options change: KubeRay starts a second RayCluster and
# switches traffic to it once it serves.
NEW_CLUSTER_EDIT = {"serving": {"requestTimeoutSeconds": 150}}

# The CPU autoscaling case: two engine sequences at a time, so a dozen
# parallel requests queue in the engine and the queue-depth policy asks for
# a second replica; a short downscale delay (also Ray's idle timeout for the
# worker pod) so the test sees it go back to one.
AUTOSCALING = {"minReplicas": 1, "maxReplicas": 2, "targetQueueDepth": 2,
               "upscaleDelaySeconds": 2, "downscaleDelaySeconds": 30}
AUTOSCALED_ENGINE = {"maxNumSeqs": 2}
LOAD_CLIENTS = 12


def merge(base: Mapping[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    """`base` with `changes` merged in, maps key by key (as `kubectl patch --type merge`); None deletes."""
    out = copy.deepcopy(dict(base))
    for key, value in changes.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def build_tiny(name: str = TINY, **spec_changes: Any) -> dict[str, Any]:
    """manifests/examples/tiny-cpu.yaml named `name`, each top-level spec field replaced as given."""
    doc = yaml.safe_load((EXAMPLES / "tiny-cpu.yaml").read_text())
    doc["metadata"] = {"name": name}
    doc["spec"].update(spec_changes)
    return doc


def build_tiny_autoscaled() -> dict[str, Any]:
    doc = build_tiny(TINY_AUTOSCALED, autoscaling=dict(AUTOSCALING))
    doc["spec"].pop("replicas")  # the CRD refuses both
    doc["spec"]["engine"] = merge(doc["spec"]["engine"], AUTOSCALED_ENGINE)
    return doc


# ---- reading KubeRay's and Ray's objects ----

def find_condition(obj: Optional[Mapping[str, Any]], type_: str) -> dict[str, Any]:
    for cond in ((obj or {}).get("status") or {}).get("conditions") or ():
        if cond.get("type") == type_:
            return dict(cond)
    return {}


def read_cluster_names(rayservice: Optional[Mapping[str, Any]]) -> tuple[str, str]:
    """(active, pending) RayCluster names a RayService reports; '' for none."""
    status = (rayservice or {}).get("status") or {}
    return ((status.get("activeServiceStatus") or {}).get("rayClusterName") or "",
            (status.get("pendingServiceStatus") or {}).get("rayClusterName") or "")


def describe_rollout(rayservice: Optional[Mapping[str, Any]]) -> str:
    """'' when KubeRay runs the RayService's current spec on one cluster; otherwise what it still does.

    KubeRay stamps status.observedGeneration once it has acted on a spec; during
    a NewCluster upgrade it keeps serving from the old cluster with
    UpgradeInProgress=True and names the new one in pendingServiceStatus.
    """
    if rayservice is None:
        return "there is no RayService"
    generation = (rayservice.get("metadata") or {}).get("generation")
    observed = (rayservice.get("status") or {}).get("observedGeneration")
    if observed != generation:
        return f"KubeRay has observed generation {observed} of the RayService, not {generation}"
    if find_condition(rayservice, "UpgradeInProgress").get("status") == "True":
        return "KubeRay reports UpgradeInProgress=True"
    active, pending = read_cluster_names(rayservice)
    if pending:
        return f"RayCluster {pending} is pending next to {active or 'no active cluster'}"
    if not active:
        return "the RayService has no active RayCluster"
    return ""


def read_worker_bounds(raycluster: Mapping[str, Any]) -> list[tuple[str, int, int]]:
    """(groupName, minReplicas, maxReplicas) of each worker group, as Ray's autoscaler reads them."""
    return [(g.get("groupName", ""), int(g.get("minReplicas") or 0), int(g.get("maxReplicas") or 0))
            for g in (raycluster.get("spec") or {}).get("workerGroupSpecs") or ()]


def find_cpu_count(group: Mapping[str, Any]) -> Optional[str]:
    """Where Ray's autoscaler finds a group's CPUs, or None: then it cannot start.

    In its order (ray/autoscaler/_private/kuberay/autoscaling_config.py
    _get_num_cpus): the group's `resources` CPU, rayStartParams num-cpus, the
    Ray container's cpu limit, then its cpu request.
    """
    if "CPU" in (group.get("resources") or {}):
        return f"resources.CPU={group['resources']['CPU']}"
    if "num-cpus" in (group.get("rayStartParams") or {}):
        return f"rayStartParams.num-cpus={group['rayStartParams']['num-cpus']}"
    containers = ((group.get("template") or {}).get("spec") or {}).get("containers") or [{}]
    resources = containers[0].get("resources") or {}
    for kind in ("limits", "requests"):
        if "cpu" in (resources.get(kind) or {}):
            return f"container {kind}.cpu={resources[kind]['cpu']}"
    return None


def find_groups_without_cpus(raycluster: Mapping[str, Any]) -> list[str]:
    """Groups (head included) whose CPU count Ray's autoscaler cannot find."""
    spec = raycluster.get("spec") or {}
    groups = [("head", spec.get("headGroupSpec") or {})]
    groups += [(g.get("groupName", "?"), g) for g in spec.get("workerGroupSpecs") or ()]
    return [name for name, group in groups if find_cpu_count(group) is None]


def parse_json_output(text: str, opener: str = "{") -> Any:
    """The first JSON value starting with `opener` in a command's output (log lines may come before it)."""
    decoder = json.JSONDecoder()
    start = text.find(opener)
    while start != -1:
        try:
            return decoder.raw_decode(text, start)[0]
        except ValueError:
            start = text.find(opener, start + 1)
    raise AssertionError(f"no JSON value starting with {opener!r} in: {text[:2000]}")


def is_pod_ready(pod: Mapping[str, Any]) -> bool:
    if (pod.get("metadata") or {}).get("deletionTimestamp"):
        return False
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in (pod.get("status") or {}).get("conditions") or ())


def live_pods(pods: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Pods not being deleted."""
    return [p for p in pods if not (p.get("metadata") or {}).get("deletionTimestamp")]
