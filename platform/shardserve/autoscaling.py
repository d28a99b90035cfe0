"""The path serveConfigV2 names as the autoscaling policy
(`shardserve.autoscaling:QueueDepthPolicy`); kept stable for RayServices
already rendered."""

from shardserve.serve.autoscaling.policy import QueueDepthPolicy

__all__ = ["QueueDepthPolicy"]
