"""ModelDeployment parsing: valid files load, every invalid one names field and rule."""

from pathlib import Path

import pytest
import yaml

from shardserve.api.validation import SpecError, field_path, load_file, parse_deployment

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "manifests" / "examples" / "tiny-cpu.yaml"


def base() -> dict:
    return yaml.safe_load(TINY.read_text())


def with_spec(**changes) -> dict:
    doc = base()
    for path, value in changes.items():
        node = doc["spec"]
        *parents, leaf = path.split("__")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return doc


def test_tiny_example_loads_with_defaults():
    md = load_file(TINY)
    assert md.metadata.name == "tiny"
    assert md.spec.model.scheme == "builtin"
    assert md.spec.engine.max_model_len == 256
    assert md.spec.effective_replicas == 1
    assert md.spec.serving.port == 8000  # default filled in
    assert md.spec.parallelism.backend == "auto"


def test_camel_case_round_trip():
    md = parse_deployment(base())
    dumped = md.model_dump(by_alias=True, exclude_none=True)
    assert dumped["spec"]["engine"]["maxModelLen"] == 256
    assert parse_deployment(dumped) == md


@pytest.mark.parametrize(
    "doc, expected",
    [
        (with_spec(parallelism__tensor=0), "spec.parallelism.tensor: Input should be greater than or equal to 1"),
        (with_spec(parallelism__tensr=2), "spec.parallelism.tensr: unknown field"),
        (with_spec(model__source="ftp://x/y"), "spec.model.source: 'ftp://x/y' must start with one of"),
        (with_spec(model__source="builtin://huge"), "spec.model.source: builtin models are tiny"),
        (with_spec(model__source="file://relative/path"), "spec.model.source: file:// needs an absolute path"),
        (with_spec(engine__dtype="float8"), "spec.engine.dtype: Input should be 'auto', 'float32', 'float16' or 'bfloat16'"),
        (with_spec(engine__kvCacheMemory="lots"), "spec.engine.kvCacheMemory: 'lots' is not a Kubernetes quantity"),
        (with_spec(engine__args={"max_num_batched_tokenz": 512}),
         "spec.engine.args.max_num_batched_tokenz: not a vLLM engine or front-end argument "
         "(did you mean 'max_num_batched_tokens'?)"),
        (with_spec(engine__args={"enable_prefix_caching": "yes"}), "spec.engine.args.enable_prefix_caching: must be a bool"),
        (with_spec(engine__args={"tensor_parallel_size": 2}),
         "spec.engine.args.tensor_parallel_size: set by spec.parallelism.tensor"),
        (with_spec(autoscaling={"minReplicas": 3, "maxReplicas": 2}), "maxReplicas (2) must be >= minReplicas (3)"),
        (with_spec(autoscaling={"maxReplicas": 2}), "set either replicas or autoscaling, not both"),
        (with_spec(resources__acceleratorType="H100"), "acceleratorType applies to GPUs only"),
        (with_spec(parallelism__tensor=3, resources__acceleratorsPerNode=4),
         "spec.parallelism.tensor: 3 does not divide the model's 4 attention heads"),
        (with_spec(parallelism__pipeline=3, resources__acceleratorsPerNode=4),
         "spec.parallelism.pipeline: 3 stages exceed the model's 2 layers"),
        (with_spec(parallelism__tensor=4), "spec.parallelism.tensor: 4 is larger than a node"),
        (with_spec(parallelism__backend="ray"), "vLLM's CPU platform refuses the ray executor"),
        (with_spec(serving__port=80), "spec.serving.port: Input should be greater than or equal to 1024"),
        # KubeRay's metrics port and Ray's worker ports (cluster review #4).
        (with_spec(serving__port=8080), "spec.serving.port: 8080 is taken in every Ray pod: 8080 (KubeRay's metrics port)"),
        (with_spec(serving__port=10500), "spec.serving.port: 10500 is taken in every Ray pod: 10002-19999"),
        (with_spec(model__cacheSize="lots"), "spec.model.cacheSize: 'lots' is not a Kubernetes quantity"),
        (with_spec(ingress={"host": "Bad Host"}), "spec.ingress.host: String should match pattern"),
        ({**base(), "kind": "Deployment"}, "kind: Input should be 'ModelDeployment'"),
        ({**base(), "metadata": {"name": "Tiny_Model"}}, "metadata.name: 'Tiny_Model' must be a DNS-1123 label"),
        ({k: v for k, v in base().items() if k != "spec"}, "spec: required field is missing"),
        (["not", "a", "mapping"], "(document): must be a mapping"),
    ],
)
def test_invalid_specs_name_field_and_rule(doc, expected):
    with pytest.raises(SpecError) as caught:
        parse_deployment(doc)
    assert any(expected in problem for problem in caught.value.problems), caught.value.problems


def test_every_problem_is_reported_at_once():
    doc = with_spec(parallelism__tensor=0, engine__dtype="fp8", serving__port=1)
    with pytest.raises(SpecError) as caught:
        parse_deployment(doc)
    fields = {p.split(":")[0] for p in caught.value.problems}
    assert fields == {"spec.parallelism.tensor", "spec.engine.dtype", "spec.serving.port"}


def test_yaml_syntax_error_names_the_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: shardserve.dev/v1alpha1\nspec: [unclosed\n")
    with pytest.raises(SpecError) as caught:
        load_file(bad)
    assert "not valid YAML at line" in caught.value.problems[0]


def test_one_document_per_file(tmp_path):
    two = tmp_path / "two.yaml"
    two.write_text(TINY.read_text() + "\n---\n" + TINY.read_text())
    with pytest.raises(SpecError, match="expected one ModelDeployment, found 2"):
        load_file(two)


def test_missing_file_is_a_spec_error(tmp_path):
    with pytest.raises(SpecError, match="cannot read file"):
        load_file(tmp_path / "absent.yaml")


def _cli(*argv: str) -> int:
    from shardserve.cli import main

    try:
        return main(list(argv))
    except SystemExit as stop:
        return int(stop.code or 0)


def test_validate_and_run_refuse_a_paused_deployment_naming_the_field(tmp_path, capsys):
    """replicas: 0 pauses a deployment in a cluster; locally there is nothing to serve (cluster review #6)."""
    path = tmp_path / "paused.yaml"
    path.write_text(yaml.safe_dump(with_spec(replicas=0)))
    assert _cli("validate", str(path)) == 2
    assert "spec.replicas: 0 pauses the deployment in a cluster" in capsys.readouterr().err
    assert _cli("run", str(path)) == 2  # refused before anything starts
    assert "spec.replicas: 0" in capsys.readouterr().err
    assert _cli("validate", "--cluster", str(path)) == 0
    assert "valid ModelDeployment" in capsys.readouterr().out


def test_validate_refuses_a_port_ray_takes(tmp_path, capsys):
    path = tmp_path / "port.yaml"
    path.write_text(yaml.safe_dump(with_spec(serving__port=8265)))
    assert _cli("validate", "--cluster", str(path)) == 2
    assert "spec.serving.port: 8265 is taken in every Ray pod" in capsys.readouterr().err


def test_field_path_of_an_error_location():
    assert field_path(("spec", "engine", "args", "x")) == "spec.engine.args.x"
    assert field_path(("spec", "tolerations", 0, "key")) == "spec.tolerations[0].key"
    assert field_path(()) == ""
    # A request body's location: the root and a union's type name are not fields.
    loc = ("body", "messages", 0, "ChatCompletionUserMessageParam", "content")
    assert field_path(loc, skip=lambda part: part == "body" or part[0].isupper()) == "messages[0].content"
