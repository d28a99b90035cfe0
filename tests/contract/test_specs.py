"""The generated spread is large, covers every value it promises, and is refused only where it should be."""

from __future__ import annotations

from tests.contract.specs import (
    ACCELERATORS_PER_NODE,
    CASES,
    EXAMPLES,
    GPU,
    GPU_TYPES,
    PORTS,
    SHAPES,
    SPECS,
    generate_candidates,
    generate_specs,
)


def test_generator_yields_a_healthy_number_of_specs():
    accepted, refused = generate_specs()
    assert len(accepted) > 100, f"only {len(accepted)} generated specs pass the spec"
    assert len(accepted) + len(refused) == len(generate_candidates())
    assert len(SPECS) == len(accepted) + len(EXAMPLES) + len(CASES)
    assert EXAMPLES and CASES


def test_generated_specs_cover_every_dimension():
    accepted, _ = generate_specs()
    specs = [md.spec for md in accepted.values()]
    gpu = [s for s in specs if s.resources.accelerator == GPU]
    assert {(s.parallelism.tensor, s.parallelism.pipeline) for s in gpu} == set(SHAPES)
    assert {s.resources.accelerators_per_node for s in gpu} == set(ACCELERATORS_PER_NODE)
    assert {s.resources.accelerator_type for s in gpu} == set(GPU_TYPES)
    assert {s.resources.cpu is None for s in gpu} == {True, False}
    assert {s.serving.port for s in specs} == set(PORTS)
    assert {s.replicas for s in specs if s.autoscaling is None} == {1, 2}
    scaled = [s.autoscaling for s in specs if s.autoscaling is not None]
    assert {a.min_replicas for a in scaled} == {0, 1}
    assert {a.max_replicas for a in scaled} == {1, 2, 3, 4}
    assert any(s.resources.accelerator == "cpu" for s in specs)


def test_generated_specs_are_refused_only_for_placement():
    """tensor > acceleratorsPerNode (GPU), or more CPU workers than one node (CPU)."""
    _, refused = generate_specs()
    assert refused
    for label, reason in refused.items():
        assert reason.startswith("spec.parallelism"), f"{label}: {reason}"
