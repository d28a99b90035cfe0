"""Queue-depth autoscaling: a pure policy and the Ray Serve glue around it.

A replica batches continuously, so its count of ongoing requests says little
about overload; the engine's queue of *waiting* requests does. Each replica
reports its vLLM scheduler's waiting and running counts (engine_queue.py);
requests still queued in Serve's handles, not yet given to any replica, count
as waiting too.

The policy owns the delays itself (Serve's own delay logic is switched off
for this deployment) so that every decision, with the inputs behind it, is
made and explained in one pure function.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Optional

from ray.serve.config import AutoscalingContext
from ray.util.metrics import Gauge

from shardserve.api.contract import KV_NAMESPACE, decision_key
from shardserve.serve.ray_private import kv_put

# Serve's own logger: its lines land in the controller log beside Serve's decisions.
logger = logging.getLogger("ray.serve")

WAITING = "waiting"
RUNNING = "running"


@dataclass(frozen=True)
class ScalingBounds:
    min_replicas: int
    max_replicas: int
    target_queue_depth: float  # waiting requests per replica that call for more replicas
    replica_capacity: int  # requests one replica runs at once (maxOngoingRequests)
    upscale_delay_s: float
    downscale_delay_s: float


@dataclass(frozen=True)
class ScalingInputs:
    now: float
    running_replicas: int  # replicas serving now
    target_replicas: int  # replicas already decided on (some may still be starting)
    waiting: float  # summed over replicas, plus requests queued at handles
    running: float  # summed over replicas
    high_since: Optional[float] = None  # when the queue first passed the target
    low_since: Optional[float] = None  # when the load first fit fewer replicas


@dataclass(frozen=True)
class ScalingDecision:
    desired_replicas: int
    reason: str
    high_since: Optional[float] = None
    low_since: Optional[float] = None
    inputs: dict[str, float] = field(default_factory=dict)

    @property
    def changes(self) -> bool:
        return self.inputs.get("target_replicas") != self.desired_replicas


def compute_scaling(inputs: ScalingInputs, bounds: ScalingBounds) -> ScalingDecision:
    """Desired replicas and why, from one window of queue measurements.

    Holding means keeping the current target, so a decision in progress (a
    replica still starting) is never undone by the next tick.
    """
    serving, target = inputs.running_replicas, inputs.target_replicas
    waiting, running, now = inputs.waiting, inputs.running, inputs.now
    explained = {"running_replicas": serving, "target_replicas": target, "waiting": waiting, "running": running}
    # Never below the spec's floor, and never zero while anything is waiting.
    floor = max(bounds.min_replicas, 1 if waiting + running > 0 else 0)

    def decide(desired: int, reason: str, high: Optional[float] = None, low: Optional[float] = None) -> ScalingDecision:
        return ScalingDecision(min(bounds.max_replicas, max(floor, desired)), reason, high, low, explained)

    if serving == 0:
        if target == 0 and waiting + running > 0:
            return decide(1, f"scale from zero: {waiting:g} request(s) waiting for a replica")
        return decide(target, "no replica serving yet" if target else "idle at zero replicas")

    per_replica = waiting / serving
    if per_replica > bounds.target_queue_depth:
        # Enough replicas that each holds at most the target queue; at least one more.
        wanted = min(bounds.max_replicas, max(serving + 1, math.ceil(waiting / bounds.target_queue_depth)))
        headline = f"queue {per_replica:.1f}/replica > target {bounds.target_queue_depth:g}"
        if wanted <= target:
            reason = (f"{headline}, {target - serving} replica(s) starting" if target > serving
                      else f"{headline}, at maxReplicas {bounds.max_replicas}")
            return decide(target, reason)
        high_since = inputs.high_since if inputs.high_since is not None else now
        if now - high_since < bounds.upscale_delay_s:
            return decide(target, f"{headline} for {now - high_since:.0f}s of {bounds.upscale_delay_s:g}s", high=high_since)
        return decide(wanted, f"scale up {target}->{wanted}: {headline} for {now - high_since:.0f}s")

    # Fewer replicas suffice only with an empty queue and the running requests
    # within their capacity (maxOngoingRequests each).
    fits = max(bounds.min_replicas, math.ceil(running / bounds.replica_capacity))
    if waiting == 0 and fits < target:
        low_since = inputs.low_since if inputs.low_since is not None else now
        if now - low_since < bounds.downscale_delay_s:
            return decide(target, f"queue empty, load fits {fits} replica(s) for {now - low_since:.0f}s "
                                  f"of {bounds.downscale_delay_s:g}s", low=low_since)
        return decide(fits, f"scale down {target}->{max(fits, floor)}: queue empty and {running:g} running "
                            f"fit {fits} replica(s) for {now - low_since:.0f}s")
    return decide(target, f"steady: queue {per_replica:.1f}/replica, {running:g} running")


# ---- Ray Serve glue -------------------------------------------------------

def inputs_from_context(ctx: AutoscalingContext) -> ScalingInputs:
    """Reads the window Serve aggregated for this deployment."""
    metrics = ctx.aggregated_metrics or {}
    waiting = sum(metrics.get(WAITING, {}).values())
    running = sum(metrics.get(RUNNING, {}).values())
    queued_at_handles = ctx.total_queued_requests or 0.0
    state = ctx.policy_state or {}
    return ScalingInputs(
        now=ctx.current_time if ctx.current_time is not None else time.time(),
        running_replicas=ctx.current_num_replicas,
        target_replicas=ctx.target_num_replicas,
        waiting=waiting + queued_at_handles,
        running=running,
        high_since=state.get("high_since"),
        low_since=state.get("low_since"),
    )


class QueueDepthPolicy:
    """Ray Serve custom autoscaling policy; Serve builds it once with policy_kwargs."""

    def __init__(self, target_queue_depth: float, replica_capacity: int, upscale_delay_s: float, downscale_delay_s: float):
        self._settings = (float(target_queue_depth), int(replica_capacity), float(upscale_delay_s), float(downscale_delay_s))
        self._last_reason = ""
        self._published: Optional[dict[str, Any]] = None
        self._gauges: Optional[dict[str, Any]] = None

    def __call__(self, ctx: AutoscalingContext) -> tuple[int, dict[str, Any]]:
        target, capacity, up_delay, down_delay = self._settings
        bounds = ScalingBounds(ctx.capacity_adjusted_min_replicas, ctx.capacity_adjusted_max_replicas,
                               target, capacity, up_delay, down_delay)
        decision = compute_scaling(inputs_from_context(ctx), bounds)
        # Log each change of mind (the kind of decision), not every tick.
        kind = decision_kind(decision.reason)
        if decision.changes or kind != self._last_reason:
            logger.info("autoscaling %s/%s: %s (inputs %s)", ctx.app_name, ctx.deployment_name,
                        decision.reason, decision.inputs)
            self._last_reason = kind
        state = {**(ctx.policy_state or {}), "high_since": decision.high_since,
                 "low_since": decision.low_since, "reason": decision.reason}
        self._publish(ctx, decision)
        self._record_metrics(ctx, decision)
        return decision.desired_replicas, state

    def _record_metrics(self, ctx: AutoscalingContext, decision: ScalingDecision) -> None:
        """Queue gauges beside Serve's own serve_autoscaling_desired_replicas."""
        if self._gauges is None:
            tags = ("application", "deployment")
            self._gauges = {
                "waiting": Gauge("shardserve_queue_waiting_requests", "Requests waiting for the engine "
                                 "(engine queue plus Serve handle queue), as the autoscaler sees them.", tag_keys=tags),
                "running": Gauge("shardserve_queue_running_requests", "Requests the engines are running.", tag_keys=tags),
                "running_replicas": Gauge("shardserve_replicas_running", "Model replicas serving.", tag_keys=tags),
            }
        values = {"application": ctx.app_name or "", "deployment": ctx.deployment_name}
        for key, gauge in self._gauges.items():
            gauge.set(float(decision.inputs[key]), tags=values)

    def _publish(self, ctx: AutoscalingContext, decision: ScalingDecision) -> None:
        """Latest decision into Ray's key-value store, for `shardserve status`.

        Written when the decision or its rounded inputs change, so a steady
        deployment writes nothing.
        """
        app = ctx.app_name or ""  # Serve names no application for a deployment outside one
        record = build_decision_record(app, ctx.deployment_name, decision)
        if record == self._published:
            return
        try:
            kv_put(decision_key(app, ctx.deployment_name), json.dumps(record), KV_NAMESPACE)
            self._published = record
        except Exception as err:  # status is informative; never fail scaling for it
            logger.warning("could not publish the autoscaling decision: %r", err)


def decision_kind(reason: str) -> str:
    """'queue 3.2/replica > target 2 for 1s of 2s' -> 'queue/replica > target for s of s'."""
    return " ".join(w for w in (part.strip("0123456789.->") for part in reason.split()) if w)


def build_decision_record(app: str, deployment: str, decision: ScalingDecision) -> dict[str, Any]:
    return {
        "app": app,
        "deployment": deployment,
        "desired_replicas": decision.desired_replicas,
        "reason": decision.reason,
        **{k: round(float(v)) for k, v in decision.inputs.items()},
    }
