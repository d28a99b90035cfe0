"""kubectl and helm as the e2e suite drives them: subprocesses pinned to one kubeconfig context."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

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
    def from_env(cls) -> Optional["Config"]:
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
