"""Ray Serve options derived from the spec, the same in both places: the
operator writes them into serveConfigV2 and the replica's LLMConfig carries
them (pure)."""

from __future__ import annotations

from typing import Any

from shardserve.api.contract import LLM_DEPLOYMENT, POLICY_CLASS
from shardserve.api.spec import ModelDeployment

# Serve's own per-replica limit, as a multiple of what a replica admits itself
# (build_deployment_config): room for a burst to reach the replica's 429.
SERVE_LIMIT_FACTOR = 4

# Serve answers its own plain-text 408 at its HTTP timeout; it waits a little
# longer than the ingress, which answers an OpenAI-shaped 504 and stops the engine.
PROXY_TIMEOUT_MARGIN_S = 5.0


def build_proxy_timeout(md: ModelDeployment) -> float:
    return md.spec.serving.request_timeout_seconds + PROXY_TIMEOUT_MARGIN_S


def build_deployment_config(md: ModelDeployment) -> dict[str, Any]:
    """Ray Serve deployment options for the model replicas."""
    spec = md.spec
    config: dict[str, Any] = {
        "name": LLM_DEPLOYMENT,
        # A replica admits maxOngoingRequests + maxQueuedRequests itself and
        # answers an OpenAI 429 past that (AdmissionLimit). Serve's own
        # limits sit above it and never reject (Serve's answer is plain text),
        # so excess requests reach the replica and get that 429 at once.
        "max_ongoing_requests": SERVE_LIMIT_FACTOR * (spec.serving.max_ongoing_requests + spec.serving.max_queued_requests),
        "max_queued_requests": -1,
        # Let in-flight requests finish before a replica stops.
        "graceful_shutdown_timeout_s": spec.serving.request_timeout_seconds,
    }
    if spec.tenants is not None:
        # Serve hands a changed user_config to running replicas (reconfigure):
        # tenants' limits change without a restart.
        config["user_config"] = build_user_config(md)
    scaling = spec.autoscaling
    if scaling is None:
        config["num_replicas"] = spec.effective_replicas
    else:
        config["autoscaling_config"] = build_autoscaling_config(
            min_replicas=scaling.min_replicas,
            max_replicas=scaling.max_replicas,
            initial_replicas=spec.effective_replicas,
            target_queue_depth=scaling.target_queue_depth,
            replica_capacity=spec.serving.max_ongoing_requests,
            upscale_delay_s=scaling.upscale_delay_seconds,
            downscale_delay_s=scaling.downscale_delay_seconds,
        )
    return config


def build_user_config(md: ModelDeployment) -> dict[str, Any]:
    """What the model replicas' `reconfigure` reads: spec.tenants."""
    tenants = md.spec.tenants
    return {"tenants": tenants.model_dump(by_alias=True, exclude_none=True, mode="json") if tenants else None}


def build_autoscaling_config(
    *, min_replicas: int, max_replicas: int, initial_replicas: int, target_queue_depth: float,
    replica_capacity: int, upscale_delay_s: float, downscale_delay_s: float, look_back_period_s: float = 5.0,
) -> dict[str, Any]:
    """Serve's autoscaling_config running QueueDepthPolicy.

    Serve's own delays are zero because the policy applies the spec's delays;
    the look-back window is short because a queue is a fast signal.
    """
    return {
        "min_replicas": min_replicas,
        "initial_replicas": initial_replicas,
        "max_replicas": max_replicas,
        "upscale_delay_s": 0.0,
        "downscale_delay_s": 0.0,
        "look_back_period_s": look_back_period_s,
        # How often replicas and handles push their numbers to the controller.
        "metrics_interval_s": 1.0,
        "policy": {
            "policy_function": POLICY_CLASS,
            "policy_kwargs": {
                "target_queue_depth": target_queue_depth,
                "replica_capacity": replica_capacity,
                "upscale_delay_s": upscale_delay_s,
                "downscale_delay_s": downscale_delay_s,
            },
        },
    }
