"""What a spec change costs on a running cluster (pure).

`compute_change_cost(old, new)` renders both specs with render_children and
compares what KubeRay, Ray Serve and the operator each do with the difference:

  Cost.NONE             nothing rendered changes.
  Cost.DEFERRED         only fields KubeRay's RayCluster change hash ignores
                        change, beyond the worker bounds the operator writes
                        itself (tolerations on KubeRay 1.6): KubeRay neither
                        updates nor replaces the running RayCluster, so its
                        pods keep the old value until a later change starts a
                        new cluster. Also Serve HTTP options that change
                        without a new cluster (Serve refuses them on a running
                        instance; the render prevents it).
  Cost.IN_PLACE         applied to what runs, no replica restarts: the
                        Service or Ingress; a RayService field KubeRay reads on
                        every reconcile (excludeHeadPodFromServeSvc,
                        rayClusterDeletionDelaySeconds); the worker group's
                        minReplicas/maxReplicas/replicas, which the operator
                        writes onto the active and pending RayCluster because
                        KubeRay ignores them; Serve deployment options Serve
                        applies to running replicas (num_replicas,
                        autoscaling_config without a new policy).
  Cost.REPLICA_RESTART  Serve's code version of the application changes
                        (serve/_private/deploy_utils.py get_app_code_version),
                        or a deployment option Serve restarts replicas for
                        (serve/_private/version.py requires_actor_restart):
                        Serve replaces every replica in a rolling update on the
                        same pods, and each new replica loads the weights again.
  Cost.NEW_CLUSTER      the RayCluster spec as KubeRay hashes it changes
                        (shardserve.api.kuberay.strip_hash_ignored): with
                        upgradeStrategy NewCluster KubeRay starts a second
                        RayCluster of the same size, switches traffic once it
                        serves, and deletes the old one after
                        rayClusterDeletionDelaySeconds. The deployment needs
                        twice its GPUs until then.
  Cost.PAUSE            spec.replicas goes to 0: the RayService and every Ray
                        pod are deleted; the Service and Ingress stay.
  Cost.RESUME           spec.replicas leaves 0: a new RayService starts from
                        scratch (a first deployment's cost).

A change of several fields costs the highest of its parts, in the order
above (NONE lowest, NEW_CLUSTER highest; PAUSE and RESUME stand alone). The
cost can differ by KubeRay release, since the hash ignores different fields;
ChangeCost holds one per release in KUBERAY_VERSIONS, and `changes` says which
rendered field drives each.

Serve's code version is computed by Serve's own function on the parsed
serveConfigV2, so this needs ray[serve] at call time (imported lazily: the
operator's image has no Ray and never loads this module).
"""

from __future__ import annotations

import enum
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Optional

from shardserve.api.kuberay import HASH_IGNORED_WORKER_FIELDS, strip_hash_ignored
from shardserve.api.spec import ModelDeployment
from shardserve.api.yaml_loading import safe_load
from shardserve_operator import naming
from shardserve_operator.render import is_paused, render_children
from shardserve_operator.render.options import RenderOptions

# The KubeRay releases whose change hash strip_hash_ignored models: 1.5.1
# (the oldest the render supports) and 1.6.2, which also ignores tolerations,
# scheduling gates and the RayCluster's own upgradeStrategy.
KUBERAY_VERSIONS: tuple[tuple[int, int, int], ...] = ((1, 5, 1), (1, 6, 2))

# Deployment options whose change makes Serve stop and restart replicas even
# with the same code version (serve/_private/version.py
# DeploymentVersion.requires_actor_restart and compute_hashes, Ray 2.60).
SERVE_RESTART_OPTIONS = frozenset({
    "ray_actor_options", "placement_group_bundles", "placement_group_strategy",
    "placement_group_bundle_label_selector", "placement_group_fallback_strategy",
    "max_replicas_per_node", "gang_scheduling_config",
})


class Cost(enum.Enum):
    """What an edit does to a running deployment (see the module docstring)."""

    NONE = "none"
    DEFERRED = "deferred"
    IN_PLACE = "in place"
    REPLICA_RESTART = "replica restart"
    NEW_CLUSTER = "new cluster"
    PAUSE = "pause"
    RESUME = "resume"

    @property
    def rank(self) -> int:
        return _RANK[self]


_RANK = {Cost.NONE: 0, Cost.DEFERRED: 1, Cost.IN_PLACE: 2, Cost.REPLICA_RESTART: 3, Cost.NEW_CLUSTER: 4,
         Cost.PAUSE: 5, Cost.RESUME: 5}


@dataclass(frozen=True)
class Change:
    """One rendered field that differs, and what its change costs."""

    path: str  # e.g. "RayService spec.rayClusterConfig.workerGroupSpecs[0].template.spec.tolerations"
    cost: Cost
    why: str


@dataclass(frozen=True)
class ChangeCost:
    """The cost of one spec change, per KubeRay release (keys of `by_version`)."""

    by_version: Mapping[tuple[int, int, int], Cost]
    changes: Mapping[tuple[int, int, int], tuple[Change, ...]] = field(default_factory=dict)

    @property
    def cost(self) -> Cost:
        """The highest over the releases: what to plan for when the release is not known."""
        return max(self.by_version.values(), key=lambda c: c.rank)

    @property
    def uniform(self) -> bool:
        return len(set(self.by_version.values())) == 1

    def describe(self) -> str:
        if self.uniform:
            return self.cost.value
        return ", ".join(f"KubeRay {'.'.join(map(str, v))}: {c.value}" for v, c in self.by_version.items())


def compute_change_cost(old: ModelDeployment, new: ModelDeployment,
                        options: RenderOptions = RenderOptions()) -> ChangeCost:
    """What changing a running deployment from `old` to `new` costs, for each release in KUBERAY_VERSIONS."""
    old_objects, new_objects = _render(old, options), _render(new, options)
    by_version, changes = {}, {}
    for version in KUBERAY_VERSIONS:
        found = tuple(_compare(old, new, old_objects, new_objects, version))
        changes[version] = found
        by_version[version] = _total(old, new, found)
    return ChangeCost(by_version, changes)


def _render(md: ModelDeployment, options: RenderOptions) -> dict[str, dict[str, Any]]:
    # The same owner and active cluster on both sides: only the spec differs.
    objects = render_children(md, options, owner_uid="change-cost", active_cluster="active")
    out = {}
    for obj in objects:
        obj["metadata"].get("annotations", {}).pop(naming.ANNOTATION_RENDERED_HASH, None)
        out[obj["kind"]] = obj
    return out


def _total(old: ModelDeployment, new: ModelDeployment, changes: tuple[Change, ...]) -> Cost:
    if is_paused(old) != is_paused(new):
        return Cost.PAUSE if is_paused(new) else Cost.RESUME
    return max((c.cost for c in changes), key=lambda c: c.rank, default=Cost.NONE)


def _compare(old: ModelDeployment, new: ModelDeployment, old_objects: Mapping[str, dict[str, Any]],
             new_objects: Mapping[str, dict[str, Any]], version: tuple[int, int, int]) -> Iterator[Change]:
    for kind in ("Service", "Ingress"):
        for path in diff_paths(old_objects.get(kind), new_objects.get(kind)):
            yield Change(f"{kind} {path.lstrip('.')}".rstrip(), Cost.IN_PLACE,
                         "the operator replaces it; nothing restarts")
    if is_paused(old) != is_paused(new):
        state = "paused" if is_paused(new) else "running"
        yield Change("spec.replicas", Cost.PAUSE if is_paused(new) else Cost.RESUME,
                     f"the deployment is now {state}")
        return
    if is_paused(new):
        return  # no RayService on either side
    old_spec, new_spec = old_objects["RayService"]["spec"], new_objects["RayService"]["spec"]
    new_cluster = False
    for change in _compare_cluster(old_spec["rayClusterConfig"], new_spec["rayClusterConfig"], version):
        new_cluster = new_cluster or change.cost is Cost.NEW_CLUSTER
        yield change
    for key in sorted((set(old_spec) | set(new_spec)) - {"rayClusterConfig", "serveConfigV2"}):
        for path in diff_paths(old_spec.get(key), new_spec.get(key), f"spec.{key}"):
            yield Change(f"RayService {path}", Cost.IN_PLACE, "KubeRay reads it on every reconcile")
    yield from _compare_serve(old_spec["serveConfigV2"], new_spec["serveConfigV2"], new_cluster)


def _compare_cluster(old: Mapping[str, Any], new: Mapping[str, Any], version: tuple[int, int, int]) -> Iterator[Change]:
    prefix = "RayService spec.rayClusterConfig"
    hashed = diff_paths(strip_hash_ignored(old, version), strip_hash_ignored(new, version))
    if hashed:
        for path in hashed:
            yield Change(f"{prefix}{path}", Cost.NEW_CLUSTER,
                         "KubeRay's change hash covers it: a second RayCluster starts, then the first is deleted")
        return
    for path in diff_paths(old, new):
        if _is_worker_bound(path):
            yield Change(f"{prefix}{path}", Cost.IN_PLACE,
                         "the operator writes worker bounds onto the RayCluster; Ray's autoscaler adds or removes pods")
        else:
            yield Change(f"{prefix}{path}", Cost.DEFERRED,
                         "KubeRay's change hash ignores it: the running RayCluster keeps the old value")


def _is_worker_bound(path: str) -> bool:
    head, _, leaf = path.rpartition(".")
    return head.startswith(".workerGroupSpecs[") and head.endswith("]") and head.count(".") == 1 \
        and leaf in HASH_IGNORED_WORKER_FIELDS


def _compare_serve(old_text: str, new_text: str, new_cluster: bool) -> Iterator[Change]:
    from ray.serve._private.deploy_utils import get_app_code_version
    from ray.serve.schema import ServeDeploySchema

    old_doc, new_doc = safe_load(old_text), safe_load(new_text)
    if old_doc == new_doc:
        return
    old_config = ServeDeploySchema.model_validate(old_doc)
    new_config = ServeDeploySchema.model_validate(new_doc)
    prefix = "RayService spec.serveConfigV2"
    # A new cluster gets the new config from the start: what it would cost on
    # the running cluster no longer matters.
    subsumed = (Cost.NEW_CLUSTER, "the new RayCluster starts with it")
    for path in diff_paths(old_doc.get("http_options"), new_doc.get("http_options"), ".http_options"):
        yield Change(f"{prefix}{path}", *(subsumed if new_cluster else (
            Cost.DEFERRED, "Serve refuses new HTTP options on a running instance")))
    old_apps = {app.name: app for app in old_config.applications}
    new_apps = {app.name: app for app in new_config.applications}
    for name in sorted(set(old_apps) | set(new_apps)):
        where = f"{prefix}.applications[{name}]"
        before, after = old_apps.get(name), new_apps.get(name)
        if before is None or after is None:
            yield Change(where, *(subsumed if new_cluster else (
                Cost.REPLICA_RESTART, "Serve adds or removes the application")))
            continue
        if get_app_code_version(before) != get_app_code_version(after):
            paths = diff_paths(_app_doc(old_doc, name).get("args"), _app_doc(new_doc, name).get("args"), ".args")
            for path in paths or [""]:
                yield Change(f"{where}{path}", *(subsumed if new_cluster else (
                    Cost.REPLICA_RESTART, "Serve's code version changes: every replica is replaced")))
        for path in _deployment_paths(_app_doc(old_doc, name), _app_doc(new_doc, name)):
            # ".deployments.<deployment>.<option>..."; a whole entry added or removed has no option.
            parts = path.split(".")
            option = parts[3].partition("[")[0] if len(parts) > 3 else None
            if new_cluster:
                yield Change(f"{where}{path}", *subsumed)
            elif option is None or option in SERVE_RESTART_OPTIONS:
                yield Change(f"{where}{path}", Cost.REPLICA_RESTART, "Serve restarts replicas for this option")
            else:
                yield Change(f"{where}{path}", Cost.IN_PLACE, "Serve applies it to the running replicas")


def _app_doc(doc: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    return next(app for app in doc.get("applications") or () if app.get("name") == name)


def _deployment_paths(old_app: Mapping[str, Any], new_app: Mapping[str, Any]) -> list[str]:
    """Differences in the application's deployment options, keyed by deployment name."""
    old = {d.get("name"): d for d in old_app.get("deployments") or ()}
    new = {d.get("name"): d for d in new_app.get("deployments") or ()}
    return diff_paths(old, new, ".deployments")


def diff_paths(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Paths (".a.b[0].c") under which `old` and `new` differ; [] when they are equal.

    Maps are compared key by key, lists of equal length item by item; a key
    present on one side only, or a list that changed length, is one path.
    """
    if old == new:
        return []
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        out: list[str] = []
        for key in sorted(set(old) | set(new), key=str):
            out += diff_paths(old.get(key), new.get(key), f"{prefix}.{key}")
        return out
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        out = []
        for index, (a, b) in enumerate(zip(old, new, strict=True)):
            out += diff_paths(a, b, f"{prefix}[{index}]")
        return out
    return [prefix]


def summarize(cost: ChangeCost, version: Optional[tuple[int, int, int]] = None) -> str:
    """One line per change that sets the cost, for logs and events."""
    version = version or max(cost.by_version, key=lambda v: cost.by_version[v].rank)
    top = cost.by_version[version]
    lines = [f"{c.path}: {c.why}" for c in cost.changes.get(version, ()) if c.cost is top]
    return f"{top.value}" + (f" ({'; '.join(lines)})" if lines else "")
