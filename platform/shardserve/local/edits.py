"""What `shardserve run` does when its file changes (pure).

Serve applies a new config to a running application without restarting a
replica as long as the application's code version stays, and that version
hashes the application's args (serve/_private/deploy_utils.py
get_app_code_version, Ray 2.60). The args leave out what the deployment's
options carry, so edits of the replica count, the autoscaling bounds and the
tenants' limits apply at once; any other edit needs `shardserve run` started
again, and the running deployment keeps serving the file it started with.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from shardserve.api.placement import placement_for
from shardserve.api.serve_config import build_app_args
from shardserve.api.spec import ModelDeployment

# A local Ray's logical CPUs beyond its replicas': Serve's controller, the
# proxy and the tenants' ledger.
SPARE_LOGICAL_CPUS = 3
# Read before Ray starts (tracing endpoint and sampling): an edit cannot reach it.
READ_AT_START = "spec.telemetry"


@dataclass(frozen=True)
class Edit:
    """`apply`: deploy the new spec; `message`: what happens, for the terminal."""

    apply: bool
    message: str


def logical_cpus_needed(md: ModelDeployment) -> int:
    """Each replica's actor and each of its engine's workers reserve one logical CPU."""
    world = placement_for(md.spec).accelerators_per_replica
    replicas = md.spec.autoscaling.max_replicas if md.spec.autoscaling else md.spec.effective_replicas
    return (world + 1) * replicas + SPARE_LOGICAL_CPUS


def changed_fields(old: ModelDeployment, new: ModelDeployment) -> list[str]:
    """The spec's top-level fields that differ, as `spec.<field>`."""
    before = old.spec.model_dump(by_alias=True, exclude_none=True, mode="json")
    after = new.spec.model_dump(by_alias=True, exclude_none=True, mode="json")
    return [f"spec.{k}" for k in sorted(set(before) | set(after)) if before.get(k) != after.get(k)]


def plan_edit(old: ModelDeployment, new: ModelDeployment, logical_cpus: int) -> Optional[Edit]:
    """What to do with `new`, the file's spec, while `old` runs on a local Ray
    of `logical_cpus`; None when nothing changed."""
    fields = changed_fields(old, new)
    if new.metadata.name != old.metadata.name:
        return Edit(False, f"metadata.name changed to {new.metadata.name!r}: stop and start shardserve run "
                           f"to serve it; still serving {old.metadata.name!r}")
    if not fields:
        return None
    if build_app_args(old) != build_app_args(new) or READ_AT_START in fields:
        return Edit(False, f"{', '.join(fields)} changed: this edit restarts the replicas; stop and start "
                           f"shardserve run to apply it; still serving the previous spec")
    needed = logical_cpus_needed(new)
    if needed > logical_cpus:
        return Edit(False, f"{', '.join(fields)} changed: the new replica count needs {needed} logical CPUs, the "
                           f"local Ray started with {logical_cpus}; stop and start shardserve run to apply it")
    return Edit(True, f"applying {', '.join(fields)} to the running deployment (no replica restarts)")
