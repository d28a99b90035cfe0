"""Which nodes carry a GPU type, as NVIDIA's GPU Feature Discovery labels them.

Ray names a GPU type from the NVML device name (ray/_private/accelerators/
nvidia_gpu.py: "NVIDIA H100 80GB HBM3" -> "H100"); GPU Feature Discovery
labels each node `nvidia.com/gpu.product` with the same NVML name, spaces
turned into '-' ("NVIDIA-H100-80GB-HBM3"). The table lists the products of
each type Ray Serve LLM accepts, so worker pods for `acceleratorType: H100`
land only on nodes whose GPUs Ray will report as H100. `A100-40G`/`A100-80G`
are not detected by Ray (ray/util/accelerators/accelerators.py), so for them
the node label is what tells the memory sizes apart.
"""

from __future__ import annotations

from typing import Any

GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"

_A100_40G = ("NVIDIA-A100-SXM4-40GB", "NVIDIA-A100-PCIE-40GB")
_A100_80G = ("NVIDIA-A100-SXM4-80GB", "NVIDIA-A100-80GB-PCIe")

GPU_PRODUCTS: dict[str, tuple[str, ...]] = {
    "V100": ("Tesla-V100-SXM2-16GB", "Tesla-V100-SXM2-32GB", "Tesla-V100-PCIE-16GB", "Tesla-V100-PCIE-32GB"),
    "P100": ("Tesla-P100-PCIE-16GB", "Tesla-P100-PCIE-12GB", "Tesla-P100-SXM2-16GB"),
    "T4": ("Tesla-T4",),
    "P4": ("Tesla-P4",),
    "K80": ("Tesla-K80",),
    "A10G": ("NVIDIA-A10G",),
    "L4": ("NVIDIA-L4",),
    "L40S": ("NVIDIA-L40S",),
    "A100": _A100_40G + _A100_80G,
    "A100-40G": _A100_40G,
    "A100-80G": _A100_80G,
    "H100": ("NVIDIA-H100-80GB-HBM3", "NVIDIA-H100-PCIe", "NVIDIA-H100-NVL"),
    "H200": ("NVIDIA-H200", "NVIDIA-H200-NVL"),
    "H20": ("NVIDIA-H20",),
    "B200": ("NVIDIA-B200",),
    "B300": ("NVIDIA-B300-SXM6-AC",),
    "GB200": ("NVIDIA-GB200",),
    "GB300": ("NVIDIA-GB300",),
    "RTX-PRO-6000": ("NVIDIA-RTX-PRO-6000-Blackwell-Server-Edition",),
}


def build_gpu_affinity(accelerator_type: str, label: str = GPU_PRODUCT_LABEL) -> dict[str, Any]:
    """A required node affinity to the nodes whose `label` names a product of this type."""
    term = {"matchExpressions": [{"key": label, "operator": "In", "values": list(GPU_PRODUCTS[accelerator_type])}]}
    return {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [term]}}}
