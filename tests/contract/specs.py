"""The ModelDeployments the contract tests feed to Ray's and KubeRay's judges.

Three sources: every example in manifests/examples, every operator test case,
and a deterministic spread of generated specs over the dimensions that change
what we render for the cluster (accelerator and its type, tensor x pipeline,
accelerators per node, a CPU request or none, fixed or autoscaled replicas,
the serving port). Combinations the spec itself refuses (pydantic or
`parse_deployment`'s cross-field rules) are left out and counted.

Renders are cached per spec: every judge sees the same objects.
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Optional

from shardserve.api.placement import Placement, placement_for
from shardserve.api.spec import ModelDeployment
from shardserve.api.validation import SpecError, load_file, parse_deployment
from shardserve_operator.render import RenderOptions, render_children

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "manifests" / "examples").glob("*.yaml"))
CASES = sorted((ROOT / "tests" / "operator" / "cases").glob("*.yaml"))

GPU = "nvidia.com/gpu"
SHAPES = ((1, 1), (2, 1), (4, 1), (8, 1), (4, 2), (8, 2), (2, 4))  # tensor x pipeline
ACCELERATORS_PER_NODE = (1, 2, 4, 8)
# None: no acceleratorType. A100-40G/A100-80G are names Ray never detects on a node.
GPU_TYPES = (None, "L4", "A100", "A100-40G", "A100-80G", "H100")
GPU_CPUS = (None, "8", "500m", "32")  # the first: no resources.cpu
CPU_CPUS = (None, "4")
PORTS = (8000, 9000)
# What a built-in model's directory would be on a node; nothing is read from it.
BUILTIN_DIR = "/models/builtin/tiny"


@dataclass(frozen=True)
class Scaling:
    """Fixed replicas, or autoscaling bounds."""

    replicas: Optional[int] = None
    min_replicas: Optional[int] = None
    max_replicas: Optional[int] = None

    @property
    def label(self) -> str:
        if self.replicas is not None:
            return f"fixed{self.replicas}"
        return f"auto{self.min_replicas}to{self.max_replicas}"

    def as_spec(self) -> dict[str, Any]:
        if self.replicas is not None:
            return {"replicas": self.replicas}
        return {"autoscaling": {"minReplicas": self.min_replicas, "maxReplicas": self.max_replicas}}


@dataclass(frozen=True)
class Candidate:
    """One generated document before the spec has judged it."""

    label: str
    document: dict[str, Any]


def _scalings(index: int) -> tuple[Scaling, ...]:
    """Fixed 1 and 2, and autoscaling from 0 and from 1; the ceiling turns over 1..4."""
    return (
        Scaling(replicas=1),
        Scaling(replicas=2),
        Scaling(min_replicas=0, max_replicas=1 + index % 4),
        Scaling(min_replicas=1, max_replicas=1 + (index + 2) % 4),
    )


def _document(name: str, accelerator: str, tensor: int, pipeline: int, per_node: int,
              gpu_type: Optional[str], cpu: Optional[str], scaling: Scaling, port: int) -> dict[str, Any]:
    resources: dict[str, Any] = {"accelerator": accelerator, "acceleratorsPerNode": per_node}
    if gpu_type:
        resources["acceleratorType"] = gpu_type
    if cpu:
        resources["cpu"] = cpu
    spec: dict[str, Any] = {
        "model": {"id": "gen-model", "source": "hf://example-org/gen-model"},
        "parallelism": {"tensor": tensor, "pipeline": pipeline},
        "resources": resources,
        "serving": {"port": port},
        **scaling.as_spec(),
    }
    return {"apiVersion": "shardserve.dev/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": name, "namespace": "llm"}, "spec": spec}


def generate_candidates() -> list[Candidate]:
    """The full spread, refused combinations included (deterministic order).

    GPU: every shape x acceleratorsPerNode x {no cpu, a cpu} x 4 scalings;
    the GPU type, the CPU quantity and the port turn over along the way, so
    every value of each appears with every shape. CPU: the same shapes where
    they fit one node, fewer scalings.
    """
    out: list[Candidate] = []
    counter = itertools.count()
    for (tensor, pipeline), per_node in itertools.product(SHAPES, ACCELERATORS_PER_NODE):
        for with_cpu in (False, True):
            for scaling in _scalings(tensor + pipeline + per_node):
                i = next(counter)
                gpu_type = GPU_TYPES[i % len(GPU_TYPES)]
                cpu = GPU_CPUS[1 + i % (len(GPU_CPUS) - 1)] if with_cpu else None
                port = PORTS[(i // len(GPU_TYPES)) % len(PORTS)]
                name = f"gen-{i:03d}"
                label = (f"{name}-gpu-t{tensor}xp{pipeline}-n{per_node}-{gpu_type or 'anytype'}"
                         f"-cpu{cpu or 'none'}-{scaling.label}-port{port}")
                out.append(Candidate(label, _document(name, GPU, tensor, pipeline, per_node,
                                                      gpu_type, cpu, scaling, port)))
    for (tensor, pipeline), per_node in itertools.product(SHAPES, ACCELERATORS_PER_NODE):
        for cpu in CPU_CPUS:
            for scaling in (Scaling(replicas=1), Scaling(min_replicas=0, max_replicas=2)):
                i = next(counter)
                port = PORTS[i % len(PORTS)]
                name = f"gen-{i:03d}"
                label = (f"{name}-cpu-t{tensor}xp{pipeline}-n{per_node}"
                         f"-cpu{cpu or 'none'}-{scaling.label}-port{port}")
                out.append(Candidate(label, _document(name, "cpu", tensor, pipeline, per_node,
                                                      None, cpu, scaling, port)))
    return out


def generate_specs() -> tuple[dict[str, ModelDeployment], dict[str, str]]:
    """(accepted specs by label, refusal reason by label) for the generated spread."""
    accepted: dict[str, ModelDeployment] = {}
    refused: dict[str, str] = {}
    for candidate in generate_candidates():
        try:
            accepted[candidate.label] = parse_deployment(copy.deepcopy(candidate.document), candidate.label)
        except SpecError as err:
            refused[candidate.label] = "; ".join(err.problems)
    return accepted, refused


def _load_inputs() -> dict[str, ModelDeployment]:
    specs: dict[str, ModelDeployment] = {}
    for path in EXAMPLES:
        specs[f"example-{path.stem}"] = load_file(path)
    for path in CASES:
        specs[f"case-{path.stem}"] = load_file(path)
    generated, _ = generate_specs()
    specs.update(generated)
    return specs


SPECS: dict[str, ModelDeployment] = _load_inputs()
SPEC_IDS: list[str] = list(SPECS)
GPU_SPEC_IDS = [s for s in SPEC_IDS if SPECS[s].spec.resources.accelerator == GPU]
TYPED_SPEC_IDS = [s for s in SPEC_IDS if SPECS[s].spec.resources.accelerator_type]


def placement(spec_id: str) -> Placement:
    return placement_for(SPECS[spec_id].spec)


@cache
def _render(spec_id: str) -> tuple[dict[str, Any], ...]:
    return tuple(render_children(SPECS[spec_id], RenderOptions()))


def rendered_rayservice(spec_id: str) -> dict[str, Any]:
    """The RayService the operator would apply for this spec (a private copy)."""
    (rayservice,) = [obj for obj in _render(spec_id) if obj["kind"] == "RayService"]
    return copy.deepcopy(rayservice)


def replica_counts(spec_id: str) -> range:
    """Every number of model replicas Serve may ask for: 1..maxReplicas, or 1..replicas."""
    spec = SPECS[spec_id].spec
    top = spec.autoscaling.max_replicas if spec.autoscaling else spec.effective_replicas
    return range(1, top + 1)
