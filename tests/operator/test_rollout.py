"""What a spec change costs on a running cluster, and the table in docs/cluster.md that says so."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from shardserve.api.kuberay import RESERVED_PORTS
from shardserve.api.validation import load_file, parse_deployment
from shardserve_operator.render import RenderOptions
from shardserve_operator.render.rollout import (
    KUBERAY_VERSIONS,
    ChangeCost,
    Cost,
    _compare_serve,
    compute_change_cost,
    diff_paths,
    summarize,
)

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "cluster.md"
BASE = ROOT / "manifests" / "examples" / "llama-8b-1gpu.yaml"
TABLE_HEADING = "## What each spec change costs"

OLD, NEW = KUBERAY_VERSIONS  # 1.5.1, 1.6.2


def _doc(path: Path = BASE) -> dict[str, Any]:
    md = load_file(path)
    return {"apiVersion": md.api_version, "kind": md.kind, "metadata": {"name": md.metadata.name},
            "spec": md.spec.model_dump(by_alias=True, exclude_none=True, mode="json")}


def put(doc: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """`doc` with the dotted `path` (from spec.) set to `value`, or removed when it is None.

    As the CRD requires, a value under spec.autoscaling removes spec.replicas
    and spec.replicas removes spec.autoscaling.
    """
    doc = copy.deepcopy(doc)
    parts = path.split(".")
    assert parts[0] == "spec" and len(parts) > 1, path
    exclusive = {"autoscaling": "replicas", "replicas": "autoscaling"}
    if parts[1] in exclusive:
        doc["spec"].pop(exclusive[parts[1]], None)
    node = doc
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    if value is None:
        node.pop(parts[-1], None)
    else:
        node[parts[-1]] = value
    return doc


def cost_of(edits: list[tuple[str, Any, Any]], base: dict[str, Any] | None = None,
            options: RenderOptions = RenderOptions()) -> ChangeCost:
    old = new = base if base is not None else _doc()
    for path, before, after in edits:
        old, new = put(old, path, before), put(new, path, after)
    return compute_change_cost(parse_deployment(old), parse_deployment(new), options)


IN, RR, NC, DF = Cost.IN_PLACE, Cost.REPLICA_RESTART, Cost.NEW_CLUSTER, Cost.DEFERRED
AUTO = {"minReplicas": 1, "maxReplicas": 4}
TRACING = {"endpoint": "http://otel:4318"}
TENANTS = {"keys": [{"name": "a", "requestsPerMinute": 60, "priority": "high"}]}

# (id, edits on manifests/examples/llama-8b-1gpu.yaml, cost on KubeRay 1.5.1, on 1.6.2)
EDITS = [
    ("scale-up", [("spec.replicas", 1, 2)], IN, IN),
    ("scale-down", [("spec.replicas", 3, 1)], IN, IN),
    ("max-replicas", [("spec.autoscaling", {**AUTO, "maxReplicas": 2}, AUTO)], IN, IN),
    ("min-replicas", [("spec.autoscaling", AUTO, {**AUTO, "minReplicas": 2})], IN, IN),
    ("min-replicas-zero", [("spec.autoscaling", AUTO, {**AUTO, "minReplicas": 0})], IN, IN),
    ("target-queue-depth", [("spec.autoscaling", AUTO, {**AUTO, "targetQueueDepth": 2})], RR, RR),
    ("upscale-delay", [("spec.autoscaling", AUTO, {**AUTO, "upscaleDelaySeconds": 30})], RR, RR),
    ("downscale-delay", [("spec.autoscaling", AUTO, {**AUTO, "downscaleDelaySeconds": 60})], RR, RR),
    ("fixed-to-autoscaling", [("spec.autoscaling", None, AUTO)], RR, RR),
    ("max-model-len", [("spec.engine.maxModelLen", 8192, 4096)], RR, RR),
    ("dtype", [("spec.engine.dtype", "bfloat16", "float16")], RR, RR),
    ("max-num-seqs", [("spec.engine.maxNumSeqs", None, 64)], RR, RR),
    ("engine-args", [("spec.engine.args", {}, {"enable_prefix_caching": True})], RR, RR),
    ("max-ongoing", [("spec.serving.maxOngoingRequests", 64, 32)], RR, RR),
    ("revision", [("spec.model.revision", "main", "v2")], RR, RR),
    ("tensor", [("spec.parallelism.tensor", 1, 2), ("spec.resources.acceleratorsPerNode", 1, 2)], NC, NC),
    ("image", [("spec.image", None, "registry.example.com/shardserve:0.1.1")], NC, NC),
    ("memory", [("spec.resources.memory", "32Gi", "48Gi")], NC, NC),
    ("cpu", [("spec.resources.cpu", "8", "12")], NC, NC),
    ("tolerations", [("spec.resources.tolerations", [], [{"key": "dedicated", "operator": "Exists"}])], NC, NC),
    ("node-selector", [("spec.resources.nodeSelector", {}, {"pool": "gpu"})], NC, NC),
    ("accelerator-type", [("spec.resources.acceleratorType", "L4", "L40S")], NC, NC),
    ("request-timeout", [("spec.serving.requestTimeoutSeconds", 600, 1200)], NC, NC),
    ("port", [("spec.serving.port", 8000, 8001)], NC, NC),
    ("api-key-secret", [("spec.serving.apiKeySecret", None, "api-keys")], NC, NC),
    ("credentials-secret", [("spec.model.credentialsSecret", "hf-token", "hf-token-2")], NC, NC),
    ("tracing-sample-ratio", [("spec.telemetry.tracing", {**TRACING, "sampleRatio": 1.0},
                               {**TRACING, "sampleRatio": 0.1})], NC, NC),
    # Tenants' limits are the deployment's user_config (Serve calls reconfigure);
    # turning tenants on switches vLLM's scheduling policy, in the args.
    ("tenant-limits", [("spec.tenants", TENANTS, {"keys": [{"name": "a", "requestsPerMinute": 10}]})], IN, IN),
    ("tenant-added", [("spec.tenants", TENANTS, {"keys": [TENANTS["keys"][0], {"name": "b"}]})], IN, IN),
    ("tenants-on", [("spec.tenants", None, TENANTS)], RR, RR),
    ("ingress-host", [("spec.ingress.host", "a.example.com", "b.example.com")], IN, IN),
    ("ingress-added", [("spec.ingress", None, {"host": "a.example.com"})], IN, IN),
    ("cache-size", [("spec.model.cacheSize", "40Gi", "80Gi")], NC, NC),
    ("pause", [("spec.replicas", 1, 0)], Cost.PAUSE, Cost.PAUSE),
    ("resume", [("spec.replicas", 0, 1)], Cost.RESUME, Cost.RESUME),
    ("nothing", [("spec.replicas", 1, 1)], Cost.NONE, Cost.NONE),
    ("paused-ingress", [("spec.replicas", 0, 0), ("spec.ingress.host", "a.example.com", "b.example.com")], IN, IN),
    ("paused-engine", [("spec.replicas", 0, 0), ("spec.engine.dtype", "bfloat16", "float16")],
     Cost.NONE, Cost.NONE),
    ("scale-and-engine", [("spec.replicas", 1, 2), ("spec.engine.dtype", "bfloat16", "float16")], RR, RR),
    ("engine-and-image", [("spec.engine.dtype", "bfloat16", "float16"), ("spec.image", None, "x/y:1")], NC, NC),
    ("scale-and-tolerations", [("spec.replicas", 1, 2),
                               ("spec.resources.tolerations", [], [{"key": "k", "operator": "Exists"}])], NC, NC),
]


@pytest.mark.parametrize("edits, on_old, on_new", [e[1:] for e in EDITS], ids=[e[0] for e in EDITS])
def test_what_each_edit_costs(edits, on_old, on_new):
    cost = cost_of(edits)
    assert dict(cost.by_version) == {OLD: on_old, NEW: on_new}, summarize(cost)
    assert cost.cost == max(on_old, on_new, key=lambda c: c.rank)
    assert cost.uniform == (on_old == on_new)


def test_a_scale_is_in_place_because_the_operator_writes_the_bounds():
    cost = cost_of([("spec.replicas", 1, 2)])
    paths = {c.path: c.cost for c in cost.changes[OLD]}
    group = "RayService spec.rayClusterConfig.workerGroupSpecs[0]"
    assert {paths[f"{group}.{key}"] for key in ("replicas", "minReplicas", "maxReplicas")} == {IN}
    deployment = "RayService spec.serveConfigV2.applications[llama-8b].deployments.llm.num_replicas"
    assert paths[deployment] == IN


def test_a_new_cluster_names_the_field_kuberay_hashes():
    cost = cost_of([("spec.resources.memory", "32Gi", "48Gi")])
    top = [c.path for c in cost.changes[OLD] if c.cost is NC]
    container = "RayService spec.rayClusterConfig.workerGroupSpecs[0].template.spec.containers[0]"
    assert f"{container}.resources.limits.memory" in top
    assert summarize(cost).startswith("new cluster (")


def test_tolerations_reach_kuberay_1_6_through_their_digest():
    """KubeRay 1.6 ignores the tolerations themselves; the worker template's digest of them is hashed."""
    cost = cost_of([("spec.resources.tolerations", [], [{"key": "k", "operator": "Exists"}])])
    assert cost.describe() == "new cluster"
    paths = [c.path for c in cost.changes[NEW] if c.cost is NC]
    assert paths == ["RayService spec.rayClusterConfig.workerGroupSpecs[0].template.metadata.annotations."
                     "shardserve.dev/tolerations"]


def test_the_cpu_example_and_the_scale_to_zero_case():
    tiny = _doc(ROOT / "manifests" / "examples" / "tiny-cpu.yaml")
    assert cost_of([("spec.replicas", 1, 2)], tiny).cost is IN
    assert cost_of([("spec.engine.maxNumSeqs", None, 4)], tiny).cost is RR
    assert cost_of([("spec.resources.cpu", "2", "3")], tiny).cost is NC
    pipeline = _doc(ROOT / "tests" / "operator" / "cases" / "pipeline-across-nodes.yaml")
    # Two pods per replica: the bounds move by pods, still in place.
    assert cost_of([("spec.autoscaling.maxReplicas", 2, 3)], pipeline).cost is IN
    assert cost_of([("spec.autoscaling.minReplicas", 0, 1)], pipeline).cost is IN


def test_the_gpu_product_label_option_is_part_of_the_render():
    """With the label off, a new GPU type still changes the group's Ray resources."""
    cost = cost_of([("spec.resources.acceleratorType", "L4", "L40S")], options=RenderOptions(gpu_product_label=""))
    assert cost.cost is NC
    assert not [c for c in cost.changes[OLD] if "affinity" in c.path]


def _serve_config(http: dict[str, Any] | None = None, **deployment: Any) -> str:
    return yaml.safe_dump({
        "http_options": http or {"host": "0.0.0.0", "port": 8000},
        "applications": [{"name": "app", "import_path": "shardserve.app:build_app", "route_prefix": "/",
                          "args": {"a": 1}, "deployments": [{"name": "llm", **deployment}]}],
    })


def test_serve_http_options_without_a_new_cluster_are_deferred():
    """Serve refuses new HTTP options on a running instance; the render avoids it with a pod annotation."""
    changes = list(_compare_serve(_serve_config(), _serve_config({"host": "0.0.0.0", "port": 8001}), False))
    assert [(c.path, c.cost) for c in changes] == [("RayService spec.serveConfigV2.http_options.port", DF)]
    changes = list(_compare_serve(_serve_config(), _serve_config({"host": "0.0.0.0", "port": 8001}), True))
    assert [c.cost for c in changes] == [NC]


@pytest.mark.parametrize("before, after, cost", [
    ({"num_replicas": 1}, {"num_replicas": 2}, IN),
    ({"max_ongoing_requests": 5}, {"max_ongoing_requests": 6}, IN),
    ({"ray_actor_options": {"num_cpus": 1}}, {"ray_actor_options": {"num_cpus": 2}}, RR),
    ({"placement_group_bundles": [{"CPU": 1}]}, {"placement_group_bundles": [{"CPU": 2}]}, RR),
    ({"max_replicas_per_node": 1}, {"max_replicas_per_node": 2}, RR),
], ids=["num-replicas", "max-ongoing", "actor-options", "bundles", "per-node"])
def test_serve_deployment_options_restart_replicas_only_where_serve_does(before, after, cost):
    changes = list(_compare_serve(_serve_config(**before), _serve_config(**after), False))
    assert changes and {c.cost for c in changes} == {cost}


def test_diff_paths():
    assert diff_paths({"a": 1}, {"a": 1}) == []
    assert diff_paths({"a": {"b": 1, "c": [1, 2]}}, {"a": {"b": 2, "c": [1, 3]}}) == [".a.b", ".a.c[1]"]
    assert diff_paths({"a": [1]}, {"a": [1, 2]}) == [".a"]
    assert diff_paths(None, {"x": 1}, "Ingress") == ["Ingress"]


# ---------------------------------------------------------------- docs/cluster.md


def parse_table(text: str, heading: str = TABLE_HEADING) -> tuple[list[str], list[list[str]]]:
    """The first Markdown table after `heading`: header cells and body rows."""
    section = text.split(heading, 1)[1]
    lines = [line.strip() for line in section.splitlines()]
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    header, rule, *body = rows
    assert all(set(cell) <= set("-: ") for cell in rule), rule
    return header, body


_ASSIGNMENT = re.compile(r"^(spec(?:\.[A-Za-z]+)+): (.+) → (.+)$")


def parse_change(cell: str) -> list[tuple[str, Any, Any]]:
    """`spec.a.b: OLD → NEW; spec.c: OLD → NEW` -> [(path, old, new), ...]; values are YAML, `~` unset."""
    code = cell.strip()
    assert code.startswith("`") and code.endswith("`"), cell
    edits = []
    for part in code.strip("`").split("; "):
        match = _ASSIGNMENT.match(part)
        assert match, f"not `path: old → new`: {part!r}"
        path, before, after = match.groups()
        edits.append((path, yaml.safe_load(before), yaml.safe_load(after)))
    return edits


def _version_columns(header: list[str]) -> dict[tuple[int, int, int], int]:
    columns = {}
    for index, name in enumerate(header):
        if name.startswith("KubeRay "):
            columns[tuple(int(n) for n in name.removeprefix("KubeRay ").split("."))] = index
    return columns


def _doc_rows() -> list[list[str]]:
    return parse_table(DOC.read_text())[1]


def test_the_doc_table_has_a_column_per_modelled_kuberay_release():
    header, body = parse_table(DOC.read_text())
    assert header[:2] == ["Edit", "Change"]
    assert tuple(_version_columns(header)) == KUBERAY_VERSIONS
    assert body and all(len(row) == len(header) for row in body)


@pytest.mark.parametrize("row", _doc_rows(), ids=lambda row: row[0])
def test_each_row_of_the_doc_table_is_what_compute_change_cost_says(row):
    header, _ = parse_table(DOC.read_text())
    edits = parse_change(row[header.index("Change")])
    cost = cost_of(edits)
    written = {version: row[index] for version, index in _version_columns(header).items()}
    assert written == {version: c.value for version, c in cost.by_version.items()}, \
        f"{row[0]}: the doc says {written}; compute_change_cost: {summarize(cost)}"


def test_the_doc_table_covers_the_edits_people_make():
    paths = {path for row in _doc_rows() for path, _, _ in parse_change(row[1])}
    assert paths >= {
        "spec.replicas", "spec.autoscaling", "spec.engine.maxModelLen", "spec.engine.dtype",
        "spec.parallelism.tensor", "spec.image", "spec.resources.memory", "spec.resources.cpu",
        "spec.resources.tolerations", "spec.resources.nodeSelector", "spec.resources.acceleratorType",
        "spec.serving.requestTimeoutSeconds", "spec.serving.port", "spec.serving.apiKeySecret",
        "spec.model.credentialsSecret", "spec.telemetry", "spec.ingress.host", "spec.model.cacheSize",
        "spec.tenants",
    }
    written = {cell for row in _doc_rows() for cell in row[2:4]}
    # Nothing the render produces is deferred today (tolerations carry a digest KubeRay 1.6 hashes).
    assert written == {c.value for c in Cost} - {Cost.NONE.value, Cost.DEFERRED.value}


def test_the_doc_lists_every_port_the_api_server_refuses():
    text = DOC.read_text()
    for reserved in RESERVED_PORTS:
        assert f"- {reserved.describe()}\n" in text
