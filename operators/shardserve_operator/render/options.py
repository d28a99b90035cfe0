"""What rendering needs beyond the spec: operator-wide defaults."""

from __future__ import annotations

from dataclasses import dataclass

from shardserve.api.gpu_products import GPU_PRODUCT_LABEL

# The Ray release the runtime pins (pyproject: ray[serve]==2.60.0); KubeRay
# uses rayVersion to pick Ray-version-specific behaviour (probes, autoscaler).
RAY_VERSION = "2.60.0"
DEFAULT_IMAGE = "ghcr.io/shardserve/shardserve:0.1.0"


@dataclass(frozen=True)
class RenderOptions:
    default_image: str = DEFAULT_IMAGE
    ray_version: str = RAY_VERSION
    # The head runs GCS, the dashboard, the Serve controller and KubeRay's
    # autoscaler sidecar; it hosts no replicas (num-cpus 0), so it stays small.
    head_cpu: str = "1"
    head_memory: str = "4Gi"
    # The node label naming each node's GPU product (GPU Feature Discovery's);
    # worker pods of a spec with acceleratorType require one of that type's
    # products. Empty: no such affinity (clusters whose nodes lack the label).
    gpu_product_label: str = GPU_PRODUCT_LABEL
