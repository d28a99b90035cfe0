"""ModelDeployment status from the spec and the observed children (pure).

Condition types and reasons, all in one place:

  SpecValid         True   SpecAccepted             the spec passed every check
                    False  InvalidSpec              message: "field.path: rule; ..."
  ResourcesApplied  True   Applied                  RayService, Service (and Ingress) match this generation;
                                                    the message also names a pvc:// claim that pods on
                                                    different nodes cannot share (event ClaimNotShareable)
                    False  InvalidSpec              nothing applied; children are left as they were
                    False  NotOwned                 a child's name is taken by an object this
                                                    ModelDeployment does not control
                    False  KubeRayUnsupported       the installed KubeRay CRD lacks fields the render uses
                                                    (seen at start-up, or a write refused under strict
                                                    field validation); nothing is written until it is upgraded
                    False  ClaimNotFound            the pvc:// model's PersistentVolumeClaim does not
                                                    exist; nothing is written until it does
                    False  ApplyFailed              the API server rejected or kept failing a write
  ServeReady        True   ServeRunning             KubeRay reports the RayService Ready and the
                                                    application is neither failed nor unhealthy
                    False  Paused                   spec.replicas is 0: no RayService, no Ray pods
                    False  WaitingForRayService     no RayService, or no status from KubeRay yet
                    False  Initializing, InitializingTimeout, ZeroServeEndpoints, NoActiveCluster
                                                    KubeRay's own reason for Ready=False
                    False  ApplicationDeploying     Serve is still deploying the application
                    False  ApplicationDeployFailed  Serve could not deploy it (message from Serve)
                    False  ApplicationUnhealthy     Serve reports it unhealthy
                    False  ApplicationMissing       the RayService runs no application by this name
  Progressing       True   WaitingForRayService     the RayService does not exist yet
                    True   WaitingForKubeRay        KubeRay has not yet seen the RayService's latest
                                                    generation (status.observedGeneration lags)
                    True   Initializing             KubeRay is starting the first RayCluster
                    True   UpgradeInProgress        KubeRay runs a pending RayCluster for the new spec
                                                    next to the active one, which still serves
                    True   ApplicationDeploying     Serve is deploying the latest application
                    False  RolledOut                KubeRay runs the latest RayService and Serve the
                                                    latest application
                    False  ApplicationDeployFailed  Serve could not deploy the latest application
                    False  Paused, InvalidSpec, ResourcesNotApplied
                                                    nothing rolls out (see the condition of that name)
  Ready             True   Serving                  SpecValid, ResourcesApplied and ServeReady are True
                                                    and Progressing is False: this generation serves
                    False  InvalidSpec, ResourcesNotApplied, Paused, ServeNotReady
                                                    the first of SpecValid, ResourcesApplied, ServeReady
                                                    that is not True (Paused: ServeReady's reason)
                    False  RollingOut               the endpoint serves, but the previous generation:
                                                    this one is still rolling out (Progressing's message)

Events: one per condition transition, a flip of its status or a new reason
while the status stays (so Initializing -> ApplicationDeployFailed is
reported too), with the condition's reason (Progressing's only when it is
not ServeReady's, which already told). A fall to False is a Warning unless
it is what the user asked for (RollingOut, Paused) or Progressing's. Also
`Scaled` when the replica count the autoscaler asks for changes, and a
Warning for each problem ResourcesApplied's message newly reports
(ClaimNotShareable).

Every condition carries observedGeneration; lastTransitionTime moves only
when its status flips, so rewriting a reason or message does not reset it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Optional, get_args

from shardserve.api.contract import LLM_DEPLOYMENT
from shardserve.api.kuberay import compute_rollout_done, find_cluster_names, read_worker_counts
from shardserve.api.placement import placement_for
from shardserve.api.spec import ConditionType, ModelDeployment, ModelDeploymentStatus
from shardserve_operator import naming

# The condition types are the API contract's (ConditionType), in the order status lists them.
SPEC_VALID: Final[ConditionType] = "SpecValid"
RESOURCES_APPLIED: Final[ConditionType] = "ResourcesApplied"
SERVE_READY: Final[ConditionType] = "ServeReady"
PROGRESSING: Final[ConditionType] = "Progressing"
READY: Final[ConditionType] = "Ready"
CONDITION_TYPES: tuple[ConditionType, ...] = get_args(ConditionType)

# Reasons (see the table above).
SPEC_ACCEPTED = "SpecAccepted"
INVALID_SPEC = "InvalidSpec"
APPLIED = "Applied"
NOT_OWNED = "NotOwned"
KUBERAY_UNSUPPORTED = "KubeRayUnsupported"
CLAIM_NOT_FOUND = "ClaimNotFound"
CLAIM_NOT_SHAREABLE = "ClaimNotShareable"  # an event; ResourcesApplied stays True
APPLY_FAILED = "ApplyFailed"
SERVE_RUNNING = "ServeRunning"
PAUSED = "Paused"
WAITING_FOR_RAYSERVICE = "WaitingForRayService"
KUBERAY_REASONS = ("Initializing", "InitializingTimeout", "ZeroServeEndpoints", "NoActiveCluster")
APPLICATION_DEPLOYING = "ApplicationDeploying"
APPLICATION_DEPLOY_FAILED = "ApplicationDeployFailed"
APPLICATION_UNHEALTHY = "ApplicationUnhealthy"
APPLICATION_MISSING = "ApplicationMissing"
WAITING_FOR_KUBERAY = "WaitingForKubeRay"
INITIALIZING = "Initializing"
UPGRADE_IN_PROGRESS = "UpgradeInProgress"
ROLLED_OUT = "RolledOut"
SERVING = "Serving"
RESOURCES_NOT_APPLIED = "ResourcesNotApplied"
SERVE_NOT_READY = "ServeNotReady"
ROLLING_OUT = "RollingOut"
SCALED = "Scaled"
# False for one of these is what the user asked for: their events stay Normal.
EXPECTED_REASONS = frozenset({ROLLING_OUT, PAUSED})
# False with one of these needs a person, so its event is a Warning.
FAILURE_REASONS = frozenset({INVALID_SPEC, NOT_OWNED, KUBERAY_UNSUPPORTED, CLAIM_NOT_FOUND, APPLY_FAILED,
                             APPLICATION_DEPLOY_FAILED, APPLICATION_UNHEALTHY, APPLICATION_MISSING,
                             "InitializingTimeout"})


@dataclass(frozen=True)
class ConditionState:
    type: ConditionType
    status: str  # "True" | "False" | "Unknown"
    reason: str
    message: str = ""


@dataclass(frozen=True)
class Notice:
    """A problem that does not stop the apply: shown in ResourcesApplied's message, posted as a Warning."""

    reason: str
    message: str


@dataclass(frozen=True)
class ApplyOutcome:
    """What status needs to know about the last apply."""

    not_owned: Sequence[str] = ()
    error: Optional[str] = None  # set when writes failed (after retries), were rejected or were held back
    reason: str = APPLY_FAILED  # ResourcesApplied's reason when `error` is set
    notices: Sequence[Notice] = ()


@dataclass(frozen=True)
class EventRecord:
    type: str  # "Normal" | "Warning"
    reason: str
    message: str


def format_time(now: datetime) -> str:
    """RFC 3339 in UTC to the second, as Kubernetes writes metav1.Time."""
    return now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def find_condition(conditions: Optional[Sequence[Mapping[str, Any]]], type_: str) -> Optional[Mapping[str, Any]]:
    for condition in conditions or ():
        if condition.get("type") == type_:
            return condition
    return None


def build_condition(
    state: ConditionState, previous: Optional[Mapping[str, Any]], generation: Optional[int], now: datetime
) -> dict[str, Any]:
    """A condition dict; keeps the previous lastTransitionTime unless the status flipped."""
    since = previous.get("lastTransitionTime") if previous and previous.get("status") == state.status else None
    condition: dict[str, Any] = {
        "type": state.type,
        "status": state.status,
        "reason": state.reason,
        "message": state.message,
        "lastTransitionTime": since or format_time(now),
    }
    if generation is not None:
        condition["observedGeneration"] = generation
    return condition


def _app_status(rayservice: Optional[Mapping[str, Any]], app_name: str,
                which: str = "activeServiceStatus") -> tuple[dict[str, Any], Optional[dict[str, Any]]]:
    status = (rayservice or {}).get("status") or {}
    apps = ((status.get(which) or {}).get("applicationStatuses")) or {}
    return apps, apps.get(app_name)


def compute_serve_readiness(rayservice: Optional[Mapping[str, Any]], app_name: str) -> ConditionState:
    """ServeReady, read from the RayService's own status (KubeRay's Ready condition and Serve's app status)."""
    if rayservice is None:
        return ConditionState(SERVE_READY, "False", WAITING_FOR_RAYSERVICE, "the RayService does not exist yet")
    status = rayservice.get("status") or {}
    if not status:
        return ConditionState(SERVE_READY, "False", WAITING_FOR_RAYSERVICE, "KubeRay has not reported on the RayService yet")
    apps, app = _app_status(rayservice, app_name)
    app_state = (app or {}).get("status")
    app_message = (app or {}).get("message") or ""
    if app_state == "DEPLOY_FAILED":
        return ConditionState(SERVE_READY, "False", APPLICATION_DEPLOY_FAILED,
                              app_message or "Serve could not deploy the application")
    if app_state == "UNHEALTHY":
        return ConditionState(SERVE_READY, "False", APPLICATION_UNHEALTHY,
                              app_message or "Serve reports the application unhealthy")
    ready = find_condition(status.get("conditions"), "Ready")
    is_ready = ready.get("status") == "True" if ready else status.get("serviceStatus") == "Running"
    endpoints = status.get("numServeEndpoints", 0)
    if is_ready:
        if apps and app is None:
            return ConditionState(SERVE_READY, "False", APPLICATION_MISSING, f"no Serve application named {app_name!r}")
        note = f"; application {app_state}" if app_state not in (None, "RUNNING") else ""
        return ConditionState(SERVE_READY, "True", SERVE_RUNNING, f"{endpoints} pod(s) serve the endpoint{note}")
    if app_state in ("DEPLOYING", "NOT_STARTED"):
        return ConditionState(SERVE_READY, "False", APPLICATION_DEPLOYING, app_message or "Serve is deploying the application")
    reason = (ready or {}).get("reason")
    reason = reason if reason in KUBERAY_REASONS else "Initializing"
    return ConditionState(SERVE_READY, "False", reason, (ready or {}).get("message") or "the RayService is not ready")


def compute_progress(md: ModelDeployment, rayservice: Optional[Mapping[str, Any]],
                     clusters: Optional[Mapping[str, Mapping[str, Any]]] = None) -> ConditionState:
    """Progressing: whether KubeRay and Serve still roll out the RayService as last applied.

    KubeRay stamps status.observedGeneration when it has seen a spec; during
    a NewCluster upgrade it keeps Ready=True from the old cluster and sets
    UpgradeInProgress=True (shardserve.api.kuberay.compute_rollout_done).
    """
    if rayservice is None:
        return ConditionState(PROGRESSING, "True", WAITING_FOR_RAYSERVICE, "the RayService does not exist yet")
    meta, status = rayservice.get("metadata") or {}, rayservice.get("status") or {}
    generation, observed = meta.get("generation"), status.get("observedGeneration")
    active, pending = find_cluster_names(rayservice)
    if generation is not None and observed != generation:
        seen = f"it last saw generation {observed}" if observed else "it has not reported on it yet"
        return ConditionState(PROGRESSING, "True", WAITING_FOR_KUBERAY,
                              f"KubeRay has not yet taken generation {generation} of the RayService ({seen}; "
                              f"is the KubeRay operator running?)")
    if pending or not compute_rollout_done(rayservice):
        message = f"KubeRay is starting RayCluster {pending or '(pending)'}" + (" for the new spec" if active else "")
        counts = read_worker_counts(clusters[pending]) if clusters and pending and pending in clusters else None
        if counts is not None:
            message += f" ({counts.ready} of {counts.desired} worker pod(s) ready)"
        _, new_app = _app_status(rayservice, md.metadata.name, "pendingServiceStatus")
        if new_app and new_app.get("status") not in (None, "RUNNING"):
            message += f"; its application is {new_app['status']}"
            if new_app.get("message"):
                message += f": {new_app['message']}"
        if not active:
            return ConditionState(PROGRESSING, "True", INITIALIZING, message)
        return ConditionState(PROGRESSING, "True", UPGRADE_IN_PROGRESS, f"{message}; RayCluster {active} still serves")
    _, app = _app_status(rayservice, md.metadata.name)
    app_state = (app or {}).get("status")
    if app_state == "DEPLOY_FAILED":
        return ConditionState(PROGRESSING, "False", APPLICATION_DEPLOY_FAILED,
                              (app or {}).get("message") or "Serve could not deploy the application")
    if app_state in (None, "NOT_STARTED", "DEPLOYING"):
        detail = (app or {}).get("message") or ("Serve is deploying the application" if app_state
                                                 else "Serve has not reported the application yet")
        return ConditionState(PROGRESSING, "True", APPLICATION_DEPLOYING, detail)
    return ConditionState(PROGRESSING, "False", ROLLED_OUT,
                          f"KubeRay runs generation {generation} of the RayService"
                          + (f" on RayCluster {active}" if active else ""))


def _replica_counts(md: ModelDeployment, rayservice: Optional[Mapping[str, Any]],
                    cluster: Optional[Mapping[str, Any]], serve_ready: bool) -> tuple[int, int]:
    """(replicas, readyReplicas) of the model, from the spec and the active RayCluster's own status.

    KubeRay never refreshes the copy of that status inside the RayService's
    (shardserve.api.kuberay.RAYCLUSTER_STATUS_IS_LIVE), so it is read from the
    RayCluster itself.
    """
    spec = md.spec
    pods = placement_for(spec).pods_per_replica
    counts = read_worker_counts(cluster) if cluster else None
    target = spec.effective_replicas
    if spec.autoscaling is not None and counts is not None:
        target = min(spec.autoscaling.max_replicas, max(spec.autoscaling.min_replicas, counts.desired // pods))
    if not serve_ready:
        return target, 0
    _, app = _app_status(rayservice, md.metadata.name)
    deployment = ((app or {}).get("serveDeploymentStatuses") or {}).get(LLM_DEPLOYMENT) or {}
    if deployment.get("status") == "HEALTHY":
        return target, target  # Serve runs every target replica
    return target, min(target, (counts.ready if counts else 0) // pods)


def _applied_state(md: Optional[ModelDeployment], applied: Optional[ApplyOutcome], paused: bool) -> ConditionState:
    if md is None:
        return ConditionState(RESOURCES_APPLIED, "False", INVALID_SPEC,
                              "nothing applied while the spec is invalid; existing children are left as they were")
    if applied and applied.not_owned:
        return ConditionState(RESOURCES_APPLIED, "False", NOT_OWNED, "; ".join(applied.not_owned))
    if applied and applied.error:
        return ConditionState(RESOURCES_APPLIED, "False", applied.reason, applied.error)
    if paused:
        message = ("Service and Ingress match" if md.spec.ingress else "Service matches") + \
            " the spec; no RayService while paused"
    else:
        message = ("RayService, Service and Ingress" if md.spec.ingress else "RayService and Service") + \
            " match the spec"
    for notice in (applied.notices if applied else ()):
        message += f"; {notice.message}"
    return ConditionState(RESOURCES_APPLIED, "True", APPLIED, message)


def _ready_state(states: Mapping[ConditionType, ConditionState], generation: Optional[int], endpoint: str) -> ConditionState:
    blocking = {SPEC_VALID: INVALID_SPEC, RESOURCES_APPLIED: RESOURCES_NOT_APPLIED, SERVE_READY: SERVE_NOT_READY}
    for type_, reason in blocking.items():
        state = states[type_]
        if state.status != "True":
            if state.reason == PAUSED:
                return ConditionState(READY, "False", PAUSED, state.message)
            return ConditionState(READY, "False", reason, f"{type_}: {state.message}")
    progress = states[PROGRESSING]
    if progress.status == "True":
        which = f"generation {generation}" if generation is not None else "the latest spec"
        return ConditionState(READY, "False", ROLLING_OUT,
                              f"{which} is rolling out ({progress.message}); the previous generation still serves")
    return ConditionState(READY, "True", SERVING, f"serving at {endpoint}")


def compute_status(
    md: Optional[ModelDeployment],
    rayservice: Optional[Mapping[str, Any]],
    generation: Optional[int],
    *,
    name: str,
    namespace: Optional[str],
    now: datetime,
    problems: Sequence[str] = (),
    applied: Optional[ApplyOutcome] = None,
    previous: Optional[Mapping[str, Any]] = None,
    clusters: Optional[Mapping[str, Mapping[str, Any]]] = None,
    paused: bool = False,
) -> dict[str, Any]:
    """The whole status (camelCase dict). `md` is None when the spec is invalid (`problems` say why).

    `clusters` are the RayService's RayClusters as read (name -> object);
    `paused` says the render holds no RayService (spec.replicas 0). With an
    invalid spec the counts, endpoint, placement and selector keep their
    previous values: they still describe what is deployed.
    """
    previous, clusters = previous or {}, clusters or {}
    if md is None:
        spec_valid = ConditionState(SPEC_VALID, "False", INVALID_SPEC, "; ".join(problems) or "invalid spec")
    else:
        spec_valid = ConditionState(SPEC_VALID, "True", SPEC_ACCEPTED, "the spec passed validation")
    resources = _applied_state(md, applied, paused and md is not None)
    if md is not None and paused:
        serve = ConditionState(SERVE_READY, "False", PAUSED,
                               "paused: spec.replicas is 0, so there is no RayService and no Ray pod")
    else:
        serve = compute_serve_readiness(rayservice, name)
    if md is None:
        progress = ConditionState(PROGRESSING, "False", INVALID_SPEC, "nothing rolls out while the spec is invalid")
    elif resources.status != "True":
        progress = ConditionState(PROGRESSING, "False", RESOURCES_NOT_APPLIED,
                                  f"the spec is not applied: {resources.message}")
    elif paused:
        progress = ConditionState(PROGRESSING, "False", PAUSED, "paused: nothing to roll out")
    else:
        progress = compute_progress(md, rayservice, clusters)
    states = {s.type: s for s in (spec_valid, resources, serve, progress)}
    port = md.spec.serving.port if md is not None else None
    # Ready=True (the one message with the endpoint) needs a valid spec, so port is set whenever it shows.
    endpoint = naming.build_endpoint(name, namespace, port) if port is not None else ""
    states[READY] = _ready_state(states, generation, endpoint)
    old = previous.get("conditions")
    conditions = [build_condition(states[t], find_condition(old, t), generation, now) for t in CONDITION_TYPES]

    if md is None:
        kept = {k: previous[k] for k in ("replicas", "readyReplicas", "endpoint", "placement", "selector") if k in previous}
        status = ModelDeploymentStatus.model_validate({"observedGeneration": generation, "conditions": conditions, **kept})
    else:
        if paused:
            replicas, ready_replicas = 0, 0
        else:
            active, _ = find_cluster_names(rayservice)
            replicas, ready_replicas = _replica_counts(md, rayservice, clusters.get(active) if active else None,
                                                       serve.status == "True")
        status = ModelDeploymentStatus.model_validate({
            "observedGeneration": generation,
            "conditions": conditions,
            "replicas": replicas,
            "readyReplicas": ready_replicas,
            "endpoint": naming.build_endpoint(name, namespace, md.spec.serving.port),
            "placement": placement_for(md.spec).as_status(),
            "selector": naming.build_worker_selector(name),
        })
    return status.model_dump(by_alias=True, exclude_none=True, mode="json")


def compute_events(previous: Optional[Mapping[str, Any]], new: Mapping[str, Any],
                   notices: Sequence[Notice] = ()) -> list[EventRecord]:
    """One event per condition that appeared, flipped its status, or changed its reason;
    one Warning per notice ResourcesApplied's previous message did not carry yet."""
    records = []
    serve_reason = (find_condition(new.get("conditions"), SERVE_READY) or {}).get("reason")
    for type_ in CONDITION_TYPES:
        now_ = find_condition(new.get("conditions"), type_)
        before = find_condition((previous or {}).get("conditions"), type_)
        if now_ is None or (before is not None and (before.get("status"), before.get("reason"))
                            == (now_.get("status"), now_.get("reason"))):
            continue
        if type_ == PROGRESSING:
            if now_["reason"] == serve_reason:
                continue  # the same news as ServeReady's event (deploying, failed, no RayService)
            fell = False  # False is where it rests; failures are ServeReady's and ResourcesApplied's news
        else:
            fell = now_["status"] == "False" and now_["reason"] not in EXPECTED_REASONS and (
                (before is not None and before.get("status") == "True") or now_["reason"] in FAILURE_REASONS)
        message = f"{type_} is {now_['status']}: {now_.get('message', '')}".rstrip(": ")
        records.append(EventRecord("Warning" if fell else "Normal", now_["reason"], message))
    applied_before = (find_condition((previous or {}).get("conditions"), RESOURCES_APPLIED) or {}).get("message", "")
    for notice in notices:
        if notice.message not in applied_before:
            records.append(EventRecord("Warning", notice.reason, notice.message))
    # The autoscaler's changes, seen through the RayCluster's desired workers;
    # the decision's own inputs are in Serve's controller log.
    before_replicas = (previous or {}).get("replicas")
    if before_replicas is not None and new.get("replicas") is not None and before_replicas != new["replicas"]:
        direction = "up" if new["replicas"] > before_replicas else "down"
        records.append(EventRecord("Normal", SCALED, f"scaled {direction} from {before_replicas} to {new['replicas']} "
                                                     f"replica(s); ready {new.get('readyReplicas', 0)}"))
    return records
