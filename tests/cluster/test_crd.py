"""The ModelDeployment CRD: generated, structural, and as strict as the pydantic spec where CEL can be.

Objects are admitted as the API server would (tests/cluster/admission.py):
defaults, the openAPIV3Schema with unknown fields rejected, then CEL rules.
"""

from __future__ import annotations

import copy
import subprocess
import sys
from datetime import UTC
from pathlib import Path
from typing import Any

import cel
import kubernetes_validate
import pytest
import yaml

from shardserve.api.crd import CRD_FILE_NAME, CRD_NAME, PRINTER_COLUMNS, RULES, build_crd, render_crd_yaml
from shardserve.api.spec import API_GROUP, ModelDeploymentStatus
from shardserve.api.validation import SpecError, parse_deployment
from tests.cluster.admission import admit, apply_defaults, failed_rules, schema_errors

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = (ROOT / "manifests" / "crds" / CRD_FILE_NAME, ROOT / "charts" / "shardserve" / "crds" / CRD_FILE_NAME)
EXAMPLES = sorted((ROOT / "manifests" / "examples").glob("*.yaml"))
K8S_VERSION = kubernetes_validate.latest_version()


@pytest.fixture(scope="module")
def crd() -> dict[str, Any]:
    return build_crd()


@pytest.fixture(scope="module")
def schema(crd) -> dict[str, Any]:
    return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def load(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


# ------------------------------------------------------------ generation

@pytest.mark.parametrize("path", COMMITTED, ids=lambda p: str(p.relative_to(ROOT)))
def test_committed_crd_matches_a_fresh_generation(path):
    assert path.is_file(), f"{path} is missing; run: shardserve crd -o {path.relative_to(ROOT)}"
    assert path.read_text() == render_crd_yaml(), (
        f"{path.relative_to(ROOT)} differs from the CRD generated from spec.py; "
        f"run: shardserve crd -o manifests/crds/{CRD_FILE_NAME} -o charts/shardserve/crds/{CRD_FILE_NAME}")


def test_crd_command_checks_and_writes(tmp_path):
    stale = tmp_path / "stale.yaml"
    stale.write_text(render_crd_yaml().replace("shortNames", "shortnames"))
    cli = [sys.executable, "-m", "shardserve.cli", "crd"]
    checked = subprocess.run(cli + ["--check", str(COMMITTED[0]), "--check", str(stale)],
                             capture_output=True, text=True, timeout=60)
    assert checked.returncode == 1
    assert str(stale) in checked.stderr and str(COMMITTED[0]) not in checked.stderr
    fresh = tmp_path / "fresh.yaml"
    assert subprocess.run(cli + ["-o", str(fresh)], timeout=60).returncode == 0
    assert fresh.read_text() == render_crd_yaml()
    printed = subprocess.run(cli, capture_output=True, text=True, timeout=60)
    assert yaml.safe_load(printed.stdout.split("---\n", 1)[1]) == build_crd()


# ------------------------------------------------------------ shape of the CRD

def test_crd_is_a_valid_apiextensions_object(crd):
    kubernetes_validate.validate(crd, K8S_VERSION, strict=True)
    assert crd["metadata"]["name"] == CRD_NAME
    names = crd["spec"]["names"]
    assert (names["kind"], names["plural"], names["shortNames"]) == ("ModelDeployment", "modeldeployments", ["md"])


def _walk(node: dict[str, Any], path: str = ""):
    yield path, node
    for name, child in (node.get("properties") or {}).items():
        yield from _walk(child, f"{path}.{name}")
    if isinstance(node.get("additionalProperties"), dict):
        yield from _walk(node["additionalProperties"], f"{path}.*")
    if "items" in node:
        yield from _walk(node["items"], f"{path}[]")


def test_schema_is_structural(schema):
    for path, node in _walk(schema):
        where = path or "(root)"
        assert "type" in node, f"{where}: every node needs a type"
        for banned in ("$ref", "anyOf", "oneOf", "allOf", "not", "nullable", "title", "$defs", "const"):
            assert banned not in node, f"{where}: {banned} is not structural here"
        assert not ("properties" in node and "additionalProperties" in node), f"{where}: both properties and additionalProperties"
        assert node.get("additionalProperties", {}) is not False, f"{where}: additionalProperties false is not allowed"
        if node.get("x-kubernetes-preserve-unknown-fields"):
            assert "properties" not in node, f"{where}: free-form maps only"
        if "exclusiveMinimum" in node:
            assert node["exclusiveMinimum"] is True and "minimum" in node, f"{where}: OpenAPI v3 exclusiveMinimum"


def test_root_metadata_carries_nothing_the_api_server_forbids(schema):
    # apiextensions: metadata at the root may only restrict name and generateName.
    assert schema["properties"]["metadata"] == {"type": "object"}


def test_only_engine_args_and_tolerations_keep_unknown_fields(schema):
    free = sorted(path for path, node in _walk(schema) if node.get("x-kubernetes-preserve-unknown-fields"))
    assert free == [".spec.engine.args", ".spec.resources.tolerations[]"]


def test_every_field_is_described(schema):
    bare = [path for path, node in _walk(schema) if path and not path.endswith(("[]", "*"))
            and path != ".metadata" and not node.get("description")]
    assert bare == [], f"fields without a description: {bare}"


def test_defaults_are_valid_and_match_the_spec(schema):
    for path, node in _walk(schema):
        if "default" in node:
            assert schema_errors(node, node["default"]) == [], f"{path}: default does not satisfy its own schema"
    spec = schema["properties"]["spec"]["properties"]
    assert spec["parallelism"]["default"] == {} and spec["parallelism"]["properties"]["tensor"]["default"] == 1
    assert spec["resources"]["properties"]["accelerator"]["default"] == "nvidia.com/gpu"
    assert "default" not in spec["replicas"], "a default replicas would collide with autoscaling"
    assert spec["serving"]["properties"]["requestTimeoutSeconds"] == {
        "description": "End-to-end limit for one request.", "type": "number", "default": 600,
        "minimum": 0, "exclusiveMinimum": True, "maximum": 86400}


def test_subresources_columns_and_scale_point_at_real_fields(crd, schema):
    (version,) = crd["spec"]["versions"]
    assert version["subresources"]["status"] == {}
    scale = version["subresources"]["scale"]
    paths = {path for path, _ in _walk(schema)}
    for key in ("specReplicasPath", "statusReplicasPath", "labelSelectorPath"):
        assert scale[key] in paths, f"{key} {scale[key]} is not in the schema"
    assert _type_at(schema, scale["specReplicasPath"]) == "integer"
    assert _type_at(schema, scale["statusReplicasPath"]) == "integer"
    columns = {c["name"]: c for c in version["additionalPrinterColumns"]}
    assert list(columns)[:6] == ["Model", "TP", "PP", "Replicas", "Ready", "Age"]
    for column in PRINTER_COLUMNS:
        plain = column["jsonPath"].split("[")[0]
        if not plain.startswith(".metadata"):
            assert plain in paths, f"column {column['name']}: {plain} is not in the schema"


def _type_at(schema: dict[str, Any], dotted: str) -> str:
    node = schema
    for part in dotted.strip(".").split("."):
        node = node["properties"][part]
    return node["type"]


def test_rules_compile_and_point_at_existing_fields(schema):
    count = 0
    for _path, node in _walk(schema):
        for rule in node.get("x-kubernetes-validations", ()):
            cel.compile(rule["rule"])
            count += 1
            if "fieldPath" in rule:
                target = node
                for part in rule["fieldPath"].strip(".").split("."):
                    target = target["properties"][part]
    assert count == sum(len(rules) for rules in RULES.values())


# ------------------------------------------------------------ examples

@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_is_admitted_by_the_crd_and_the_spec(path, crd):
    stored, errors = admit(crd, load(path))
    assert errors == [], f"{path.name} is rejected: {errors}"
    # The operator reads the defaulted object the API server stores.
    md = parse_deployment(stored, str(path))
    assert md == parse_deployment(load(path), str(path))


def test_examples_cover_cpu_one_gpu_and_sharded_autoscaled_ingress():
    names = {p.stem for p in EXAMPLES}
    assert {"tiny-cpu", "llama-8b-1gpu", "llama-70b-tp4-pp2"} <= names
    big = load(ROOT / "manifests" / "examples" / "llama-70b-tp4-pp2.yaml")["spec"]
    assert (big["parallelism"]["tensor"], big["parallelism"]["pipeline"]) == (4, 2)
    assert big["autoscaling"] and big["ingress"]["host"]


def test_status_the_operator_writes_fits_the_status_schema(schema):
    from datetime import datetime

    from shardserve.api.validation import load_file
    from shardserve_operator.status import compute_status

    status_schema = schema["properties"]["status"]
    now = datetime(2026, 1, 1, tzinfo=UTC)
    for path in EXAMPLES:
        md = load_file(path)
        good = compute_status(md, None, 3, name=md.metadata.name, namespace="default", now=now)
        bad = compute_status(None, None, 4, name=md.metadata.name, namespace="default", now=now,
                             problems=["spec.x: wrong"], previous=good)
        for status in (good, bad):
            assert schema_errors(status_schema, status) == [], status
    assert set(ModelDeploymentStatus.model_fields) and good["selector"].startswith(f"{API_GROUP}/")


# ------------------------------------------------------------ CEL and pydantic agree

GPU = {
    "apiVersion": "shardserve.dev/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": "m"},
    "spec": {"model": {"id": "m", "source": "hf://org/model"},
             "resources": {"accelerator": "nvidia.com/gpu", "acceleratorsPerNode": 8}},
}
CPU = {
    "apiVersion": "shardserve.dev/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": "c"},
    "spec": {"model": {"id": "tiny", "source": "builtin://tiny"},
             "resources": {"accelerator": "cpu", "acceleratorsPerNode": 4}},
}


def _with(base: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """A copy of `base` with dotted paths set ('spec.parallelism.tensor': 2); None deletes."""
    doc = copy.deepcopy(base)
    for dotted, value in changes.items():
        *parents, last = dotted.split("__")
        node = doc
        for part in parents:
            node = node.setdefault(part, {})
        if value is None:
            node.pop(last, None)
        else:
            node[last] = value
    return doc


# (id, document, valid?, a fragment the CRD's rejection must name)
TABLE = [
    ("gpu-defaults", GPU, True, None),
    ("cpu-defaults", CPU, True, None),
    ("replicas-and-autoscaling", _with(GPU, spec__replicas=2, spec__autoscaling={"maxReplicas": 3}), False,
     "spec.replicas and spec.autoscaling are mutually exclusive"),
    ("replicas-only", _with(GPU, spec__replicas=3), True, None),
    ("replicas-zero", _with(GPU, spec__replicas=0), True, None),
    ("replicas-negative", _with(GPU, spec__replicas=-1), False, "spec.replicas"),
    ("replicas-too-many", _with(GPU, spec__replicas=1001), False, "spec.replicas"),
    ("autoscaling-max-below-min", _with(GPU, spec__autoscaling={"minReplicas": 3, "maxReplicas": 2}), False,
     "spec.autoscaling.maxReplicas (2) must be >= spec.autoscaling.minReplicas (3)"),
    ("autoscaling-min-above-default-max", _with(GPU, spec__autoscaling={"minReplicas": 2}), False,
     "spec.autoscaling.maxReplicas (1) must be >= spec.autoscaling.minReplicas (2)"),
    ("autoscaling-scale-to-zero", _with(GPU, spec__autoscaling={"minReplicas": 0, "maxReplicas": 2}), True, None),
    ("autoscaling-zero-queue-depth", _with(GPU, spec__autoscaling={"targetQueueDepth": 0}), False,
     "targetQueueDepth"),
    ("tensor-larger-than-node", _with(GPU, spec__parallelism={"tensor": 16}), False,
     "spec.parallelism.tensor must be <= spec.resources.acceleratorsPerNode"),
    ("tensor-fits-node", _with(GPU, spec__parallelism={"tensor": 8}), True, None),
    ("gpu-pipeline-spans-nodes", _with(GPU, spec__parallelism={"tensor": 8, "pipeline": 4}), True, None),
    ("tensor-zero", _with(GPU, spec__parallelism={"tensor": 0}), False, "spec.parallelism.tensor"),
    ("pipeline-too-deep", _with(GPU, spec__parallelism={"pipeline": 65}), False, "spec.parallelism.pipeline"),
    ("tensor-default-node-is-8", _with(GPU, spec__resources=None, spec__parallelism={"tensor": 16}), False,
     "spec.parallelism.tensor must be <= spec.resources.acceleratorsPerNode"),
    ("cpu-world-larger-than-node", _with(CPU, spec__parallelism={"tensor": 2, "pipeline": 4}), False,
     "vLLM on CPU cannot span nodes"),
    ("cpu-world-fits", _with(CPU, spec__parallelism={"tensor": 2, "pipeline": 2}), True, None),
    ("cpu-ray-backend", _with(CPU, spec__parallelism={"backend": "ray"}), False,
     "spec.parallelism.backend ray is not allowed"),
    ("cpu-mp-backend", _with(CPU, spec__parallelism={"backend": "mp"}), True, None),
    ("gpu-mp-backend", _with(GPU, spec__parallelism={"backend": "mp"}), False,
     "spec.parallelism.backend mp is not allowed with GPUs"),
    ("gpu-ray-backend", _with(GPU, spec__parallelism={"backend": "ray"}), True, None),
    ("backend-unknown", _with(GPU, spec__parallelism={"backend": "threads"}), False, "spec.parallelism.backend"),
    ("cpu-with-gpu-type", _with(CPU, spec__resources={"accelerator": "cpu", "acceleratorType": "H100"}), False,
     "spec.resources.acceleratorType applies to GPUs only"),
    ("chat-template-two-sources", _with(CPU, spec__chat={"template": {"inline": "{{ x }}", "configMap": {
        "name": "templates", "key": "chat.jinja"}}}), False, "spec.chat.template: set exactly one of"),
    ("chat-template-no-source", _with(CPU, spec__chat={"template": {}}), False, "spec.chat.template: set exactly one of"),
    ("chat-template-config-map", _with(CPU, spec__chat={"template": {"configMap": {
        "name": "templates", "key": "chat.jinja"}}}), True, None),
    ("gpu-with-gpu-type", _with(GPU, spec__resources={"acceleratorType": "H100"}), True, None),
    ("gpu-type-unknown", _with(GPU, spec__resources={"acceleratorType": "H999"}), False,
     "spec.resources.acceleratorType"),
    ("accelerator-unknown", _with(GPU, spec__resources={"accelerator": "amd.com/gpu"}), False,
     "spec.resources.accelerator"),
    ("source-scheme-unknown", _with(GPU, spec__model={"id": "m", "source": "ftp://host/model"}), False,
     "spec.model.source"),
    ("source-empty-after-scheme", _with(GPU, spec__model={"id": "m", "source": "hf://"}), False,
     "spec.model.source"),
    ("source-only-slashes", _with(GPU, spec__model={"id": "m", "source": "s3:///"}), False, "spec.model.source"),
    ("source-builtin-unknown", _with(GPU, spec__model={"id": "m", "source": "builtin://huge"}), False,
     "spec.model.source"),
    ("source-builtin-trailing-slash", _with(GPU, spec__model={"id": "m", "source": "builtin://tiny/"}), False,
     "spec.model.source"),
    ("source-file-relative", _with(GPU, spec__model={"id": "m", "source": "file://models/x"}), False,
     "spec.model.source"),
    ("source-file-absolute", _with(GPU, spec__model={"id": "m", "source": "file:///models/x"}), True, None),
    ("source-pvc", _with(GPU, spec__model={"id": "m", "source": "pvc://claim/llama"}), True, None),
    ("source-missing", _with(GPU, spec__model={"id": "m"}), False, "source"),
    ("model-id-bad", _with(GPU, spec__model={"id": "-m", "source": "hf://o/m"}), False, "spec.model.id"),
    ("kv-cache-not-a-quantity", _with(GPU, spec__engine={"kvCacheMemory": "lots"}), False,
     "spec.engine.kvCacheMemory"),
    ("kv-cache-quantity", _with(GPU, spec__engine={"kvCacheMemory": "512Mi"}), True, None),
    ("cpu-request-not-a-quantity", _with(GPU, spec__resources={"cpu": "2 cores"}), False, "spec.resources.cpu"),
    ("memory-request-quantity", _with(GPU, spec__resources={"memory": "1.5Gi"}), True, None),
    ("dtype-unknown", _with(GPU, spec__engine={"dtype": "int8"}), False, "spec.engine.dtype"),
    ("gpu-memory-zero", _with(GPU, spec__engine={"gpuMemoryUtilization": 0}), False, "gpuMemoryUtilization"),
    ("gpu-memory-one", _with(GPU, spec__engine={"gpuMemoryUtilization": 1}), True, None),
    ("max-model-len-too-small", _with(GPU, spec__engine={"maxModelLen": 8}), False, "spec.engine.maxModelLen"),
    ("engine-args-free-form", _with(GPU, spec__engine={"args": {"max_num_batched_tokens": 4096}}), True, None),
    ("serving-port-privileged", _with(GPU, spec__serving={"port": 80}), False, "spec.serving.port"),
    # Ports KubeRay puts on the head Service or Ray binds on every pod (review #4).
    ("serving-port-kuberay-metrics", _with(GPU, spec__serving={"port": 8080}), False,
     "spec.serving.port is taken in every Ray pod"),
    ("serving-port-gcs", _with(GPU, spec__serving={"port": 6379}), False, "spec.serving.port is taken"),
    ("serving-port-ray-worker", _with(GPU, spec__serving={"port": 12345}), False, "spec.serving.port is taken"),
    ("serving-port-serve-replica", _with(GPU, spec__serving={"port": 30500}), False, "spec.serving.port is taken"),
    ("serving-port-dashboard-agent", _with(GPU, spec__serving={"port": 52365}), False, "spec.serving.port is taken"),
    ("serving-port-free", _with(GPU, spec__serving={"port": 9000}), True, None),
    ("serving-port-just-past-workers", _with(GPU, spec__serving={"port": 20000}), True, None),
    ("cache-size-quantity", _with(GPU, spec__model={"id": "m", "source": "hf://o/m", "cacheSize": "200Gi"}), True, None),
    ("cache-size-not-a-quantity", _with(GPU, spec__model={"id": "m", "source": "hf://o/m", "cacheSize": "big"}),
     False, "spec.model.cacheSize"),
    ("ingress-without-host", _with(GPU, spec__ingress={"className": "nginx"}), False, "host"),
    ("ingress-host-uppercase", _with(GPU, spec__ingress={"host": "LLM.example.com"}), False, "spec.ingress.host"),
    ("ingress-path-relative", _with(GPU, spec__ingress={"host": "llm.example.com", "path": "v1"}), False,
     "spec.ingress.path"),
    ("ingress-wildcard", _with(GPU, spec__ingress={"host": "*.example.com"}), True, None),
    ("node-selector-not-strings", _with(GPU, spec__resources={"nodeSelector": {"pool": {"a": 1}}}), False,
     "spec.resources.nodeSelector"),
    ("tolerations-free-form", _with(GPU, spec__resources={"tolerations": [{"key": "k", "operator": "Exists"}]}),
     True, None),
    ("unknown-spec-field", _with(GPU, spec__replica=2), False, "replica"),
    ("unknown-nested-field", _with(GPU, spec__parallelism={"tensors": 2}), False, "tensors"),
    ("spec-missing", _with(GPU, spec=None), False, "spec"),
    ("name-too-long", _with(GPU, metadata={"name": "m" * 41}), False, "metadata.name must be at most 40"),
    ("name-40", _with(GPU, metadata={"name": "m" * 40}), True, None),
    ("name-not-a-dns-label", _with(GPU, metadata={"name": "my.model"}), False, "DNS-1123 label"),
    ("name-starts-with-digit", _with(GPU, metadata={"name": "8b"}), False, "DNS-1123 label"),
    ("lora-adapters", _with(CPU, spec__lora={"adapters": [{"name": "a", "source": "builtin://tiny-a"},
                                                           {"name": "b", "source": "hf://org/b", "revision": "v1"}]}),
     True, None),
    ("lora-dynamic-only", _with(GPU, spec__lora={"dynamicSource": "s3://bucket/adapters"}), True, None),
    ("lora-dynamic-pvc", _with(GPU, spec__lora={"dynamicSource": "pvc://claim/adapters"}), True, None),
    ("lora-dynamic-hf", _with(GPU, spec__lora={"dynamicSource": "hf://org"}), False, "spec.lora.dynamicSource"),
    ("lora-empty", _with(GPU, spec__lora={}), False, "spec.lora: list adapters or set dynamicSource"),
    ("lora-empty-list", _with(GPU, spec__lora={"adapters": []}), False, "spec.lora: list adapters or set dynamicSource"),
    ("lora-names-repeat", _with(GPU, spec__lora={"adapters": [{"name": "a", "source": "hf://o/a"},
                                                              {"name": "a", "source": "hf://o/b"}]}),
     False, "Duplicate value"),
    ("lora-name-is-model-id", _with(GPU, spec__lora={"adapters": [{"name": "m", "source": "hf://o/a"}]}), False,
     "no adapter may be named as spec.model.id"),
    ("lora-name-with-colon", _with(GPU, spec__lora={"adapters": [{"name": "m:a", "source": "hf://o/a"}]}), False,
     "spec.lora.adapters.0.name"),
    ("lora-model-id-with-colon", _with(GPU, spec__model={"id": "m:v1", "source": "hf://o/m"},
                                       spec__lora={"dynamicSource": "gs://b/a"}), False,
     "spec.model.id must not contain ':'"),
    ("lora-builtin-unknown", _with(CPU, spec__lora={"adapters": [{"name": "a", "source": "builtin://tiny-z"}]}),
     False, "spec.lora.adapters.0.source"),
    ("lora-rank-not-vllm", _with(GPU, spec__lora={"dynamicSource": "s3://b/a", "maxRank": 12}), False,
     "spec.lora.maxRank"),
    ("lora-cpu-below-slots", _with(GPU, spec__lora={"dynamicSource": "s3://b/a", "maxAdapters": 8}), False,
     "spec.lora.maxCpuAdapters must be >= spec.lora.maxAdapters"),
    ("tenants", _with(GPU, spec__tenants={"default": {"requestsPerMinute": 60}, "keys": [
        {"name": "alice", "tokensPerMinute": 100000, "maxConcurrentRequests": 4, "priority": "high"}]}), True, None),
    ("tenants-names-repeat", _with(GPU, spec__tenants={"keys": [{"name": "a"}, {"name": "a"}]}), False,
     "Duplicate value"),
    ("tenants-priority-unknown", _with(GPU, spec__tenants={"keys": [{"name": "a", "priority": "urgent"}]}), False,
     "spec.tenants.keys.0.priority"),
    ("tenants-zero-rpm", _with(GPU, spec__tenants={"default": {"requestsPerMinute": 0}}), False,
     "spec.tenants.default.requestsPerMinute"),
    ("lora-cpu-above-slots", _with(GPU, spec__lora={"dynamicSource": "s3://b/a", "maxAdapters": 8,
                                                    "maxCpuAdapters": 16}), True, None),
]


def pydantic_verdict(doc: dict[str, Any]) -> tuple[bool, list[str]]:
    try:
        parse_deployment(copy.deepcopy(doc))
    except SpecError as err:
        return False, err.problems
    return True, []


@pytest.mark.parametrize("case_id, doc, valid, fragment", TABLE, ids=[row[0] for row in TABLE])
def test_crd_and_pydantic_agree(case_id, doc, valid, fragment, crd):
    _, crd_errors = admit(crd, doc)
    spec_ok, spec_errors = pydantic_verdict(doc)
    assert spec_ok is valid, f"pydantic says {'valid' if spec_ok else spec_errors}; the table says {valid}"
    assert (not crd_errors) is valid, f"the CRD says {crd_errors or 'valid'}; the table says {valid}"
    if fragment:
        assert any(fragment in error for error in crd_errors), f"no CRD error names {fragment!r}: {crd_errors}"


def test_table_exercises_every_cel_rule(crd, schema):
    tripped = set()
    for _, doc, valid, _ in TABLE:
        stored, errors = admit(crd, doc)
        if not valid and errors:
            tripped.update(rule for rule, _ in failed_rules(schema, stored))
    for rules in RULES.values():
        for rule in rules:
            assert rule.rule in tripped, f"no invalid case trips the rule {rule.rule!r}"


# Rules only the operator can check (they need the model's config or vLLM's
# own argument list): the CRD admits these and the operator reports them in
# the SpecValid condition.
OPERATOR_ONLY = [
    ("tensor-does-not-divide-heads", _with(CPU, spec__parallelism={"tensor": 3}), "attention heads"),
    ("pipeline-deeper-than-layers", _with(CPU, spec__parallelism={"pipeline": 4}), "layers"),
    ("engine-arg-unknown", _with(GPU, spec__engine={"args": {"max_num_batched_tokenz": 1}}), "max_num_batched_tokenz"),
    ("tool-parser-unknown", _with(CPU, spec__chat={"toolCalling": {"parser": "hermez"}}), "did you mean 'hermes'"),
    ("chat-template-broken", _with(CPU, spec__chat={"template": {"inline": "{% for m in messages %}"}}),
     "does not compile"),
]


@pytest.mark.parametrize("case_id, doc, fragment", OPERATOR_ONLY, ids=[row[0] for row in OPERATOR_ONLY])
def test_rules_left_to_the_operator(case_id, doc, fragment, crd):
    _, crd_errors = admit(crd, doc)
    assert crd_errors == []
    ok, problems = pydantic_verdict(doc)
    assert not ok and any(fragment in p for p in problems), problems


def test_defaults_applied_by_the_api_server_equal_the_spec_defaults(crd, schema):
    stored = apply_defaults(schema, copy.deepcopy(GPU))
    spec = stored["spec"]
    assert spec["parallelism"] == {"tensor": 1, "pipeline": 1, "backend": "auto"}
    assert spec["serving"]["port"] == 8000 and spec["engine"]["dtype"] == "auto"
    assert "replicas" not in spec and "autoscaling" not in spec
    assert parse_deployment(stored).spec == parse_deployment(copy.deepcopy(GPU)).spec
