"""Operator settings: command-line flags over environment variables over defaults.

Plain data and parsing only (no I/O, no kopf import), so `shardserve render`
can read the same settings the operator would use without a cluster.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Optional

from shardserve_operator.render.options import RenderOptions

ENV_PREFIX = "SHARDSERVE_"
ALL_NAMESPACES = "*"


def _split_namespaces(value: str) -> tuple[str, ...]:
    """'' or '*' -> () meaning every namespace; 'a, b' -> ('a', 'b')."""
    names = tuple(part.strip() for part in value.split(",") if part.strip())
    return () if ALL_NAMESPACES in names else names


def _flag(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"not a boolean: {value!r}")


@dataclass(frozen=True)
class LeaderElection:
    """A coordination.k8s.io Lease that only one operator replica holds at a time.

    Defaults are client-go's (15 s lease, 10 s renew deadline, 2 s retry), so
    a crashed leader is replaced within about 15 s.
    """

    enabled: bool = True
    lease_name: str = "shardserve-operator"
    lease_namespace: str = "default"
    identity: str = ""
    lease_duration_seconds: float = 15.0
    renew_deadline_seconds: float = 10.0
    retry_period_seconds: float = 2.0


@dataclass(frozen=True)
class OperatorSettings:
    namespaces: tuple[str, ...] = ()  # () watches every namespace
    # What the render takes beyond the spec: image, Ray version, head size, GPU product label.
    render: RenderOptions = field(default_factory=RenderOptions)
    health_host: str = "0.0.0.0"
    health_port: int = 8080  # 0 picks a free port
    # API server URL to talk to without credentials (local development and
    # tests); unset means in-cluster config, then ~/.kube/config.
    api_server: Optional[str] = None
    # Backoff for retried API errors (409, 429, 5xx): base * 2**attempt, capped.
    retry_base_seconds: float = 0.5
    retry_max_seconds: float = 60.0
    # How long to wait before checking again that a name taken by an object
    # this ModelDeployment does not own has been freed.
    conflict_retry_seconds: float = 60.0
    leader_election: LeaderElection = field(default_factory=LeaderElection)
    log_level: str = "INFO"

    @property
    def clusterwide(self) -> bool:
        return not self.namespaces

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> OperatorSettings:
        """Settings from SHARDSERVE_* variables (POD_NAME/POD_NAMESPACE from the downward API)."""

        def get(name: str) -> Optional[str]:
            value = environ.get(ENV_PREFIX + name)
            return value if value not in (None, "") else None

        base = cls()
        lease = base.leader_election
        updates: dict[str, Any] = {}
        if (value := environ.get(ENV_PREFIX + "NAMESPACES")) is not None:
            updates["namespaces"] = _split_namespaces(value)
        for name, attr in (("HEALTH_HOST", "health_host"), ("API_SERVER", "api_server"), ("LOG_LEVEL", "log_level")):
            if (value := get(name)) is not None:
                updates[attr] = value
        render: dict[str, Any] = {}
        for name, attr in (("DEFAULT_IMAGE", "default_image"), ("RAY_VERSION", "ray_version"),
                           ("HEAD_CPU", "head_cpu"), ("HEAD_MEMORY", "head_memory")):
            if (value := get(name)) is not None:
                render[attr] = value
        # Empty is a value here: it switches the GPU-type node affinity off.
        if (value := environ.get(ENV_PREFIX + "GPU_PRODUCT_LABEL")) is not None:
            render["gpu_product_label"] = value
        updates["render"] = dataclasses.replace(base.render, **render)
        if (value := get("HEALTH_PORT")) is not None:
            updates["health_port"] = int(value)
        for name, attr in (("RETRY_BASE_SECONDS", "retry_base_seconds"),
                           ("RETRY_MAX_SECONDS", "retry_max_seconds"),
                           ("CONFLICT_RETRY_SECONDS", "conflict_retry_seconds")):
            if (value := get(name)) is not None:
                updates[attr] = float(value)
        lease_updates: dict[str, Any] = {
            "lease_namespace": get("LEASE_NAMESPACE") or environ.get("POD_NAMESPACE") or lease.lease_namespace,
            "identity": get("LEADER_IDENTITY") or environ.get("POD_NAME") or lease.identity,
        }
        if (value := get("LEADER_ELECTION")) is not None:
            lease_updates["enabled"] = _flag(value)
        if (value := get("LEASE_NAME")) is not None:
            lease_updates["lease_name"] = value
        updates["leader_election"] = dataclasses.replace(lease, **lease_updates)
        return dataclasses.replace(base, **updates)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `shardserve operator` / `python -m shardserve_operator`; each overrides its variable."""
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument("-n", "--namespace", action="append", dest="namespaces", metavar="NAMESPACE",
                       help="watch this namespace (repeatable; globs allowed); default: "
                            "$SHARDSERVE_NAMESPACES, else every namespace")
    scope.add_argument("-A", "--all-namespaces", action="store_true", help="watch every namespace")
    parser.add_argument("--default-image", help="Ray image when a spec sets none ($SHARDSERVE_DEFAULT_IMAGE)")
    parser.add_argument("--health-port", type=int, help="port of /healthz, /readyz and /metrics "
                                                        "($SHARDSERVE_HEALTH_PORT, default 8080)")
    parser.add_argument("--no-leader-election", action="store_true",
                        help="act without holding the Lease (one replica only)")
    parser.add_argument("--lease-namespace", help="namespace of the leader Lease ($SHARDSERVE_LEASE_NAMESPACE, "
                                                  "else $POD_NAMESPACE, else default)")
    parser.add_argument("--api-server", help="API server URL without credentials (development)")
    parser.add_argument("--log-level", help="DEBUG, INFO, WARNING or ERROR ($SHARDSERVE_LOG_LEVEL)")


def from_args(args: argparse.Namespace, environ: Mapping[str, str]) -> OperatorSettings:
    settings = OperatorSettings.from_env(environ)
    updates: dict[str, Any] = {}
    if getattr(args, "all_namespaces", False):
        updates["namespaces"] = ()
    elif getattr(args, "namespaces", None):
        updates["namespaces"] = _split_namespaces(",".join(args.namespaces))
    for attr in ("health_port", "api_server", "log_level"):
        if getattr(args, attr, None) is not None:
            updates[attr] = getattr(args, attr)
    if getattr(args, "default_image", None) is not None:
        updates["render"] = dataclasses.replace(settings.render, default_image=args.default_image)
    lease = settings.leader_election
    if getattr(args, "no_leader_election", False):
        lease = dataclasses.replace(lease, enabled=False)
    if getattr(args, "lease_namespace", None):
        lease = dataclasses.replace(lease, lease_namespace=args.lease_namespace)
    updates["leader_election"] = lease
    return dataclasses.replace(settings, **updates)
