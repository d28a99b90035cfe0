"""LoRA adapters in the replica: the names a request may use, where an
adapter's files are, routing, and the engine and Serve settings spec.lora
turns into (judged by Ray's own LLMConfig)."""

from pathlib import Path

import pytest
import yaml
from ray.serve.llm import LLMConfig

from shardserve.api.lora_spec import LoraSpec
from shardserve.api.sources import mounted_path
from shardserve.api.validation import parse_deployment
from shardserve.serve.adapters import (
    AdapterNames,
    AdapterNotFound,
    AdapterRejected,
    ReplicaAdapters,
    adapter_source,
    serve_here,
)
from shardserve.serve.llm_config import build_llm_config

TINY = Path(__file__).resolve().parents[1] / "manifests" / "examples" / "tiny-cpu.yaml"
LORA = {"maxRank": 8, "adapters": [{"name": "tiny-a", "source": "builtin://tiny-a"},
                                   {"name": "sql", "source": "hf://org/sql-lora", "revision": "v2"}]}


def deployment(**spec_changes):
    doc = yaml.safe_load(TINY.read_text())
    doc["spec"].update(spec_changes)
    return parse_deployment(doc)



# ------------------------------------------------------------------ names a request may use


def test_a_request_names_the_model_or_an_adapter():
    names = AdapterNames("tiny", ("tiny-a", "sql"))
    assert names.adapter_for("tiny") is None
    assert names.adapter_for("sql") == "sql"
    assert names.adapter_for("tiny:sql") == "sql"  # Ray Serve LLM's form
    with pytest.raises(AdapterNotFound, match="GET /v1/models lists them"):
        names.adapter_for("other")
    with pytest.raises(AdapterNotFound):
        names.adapter_for("tiny:other")


def test_a_dynamic_source_takes_any_adapter_name_but_paths():
    names = AdapterNames("tiny", (), dynamic=True)
    assert names.adapter_for("customer-7") == "customer-7"
    for bad in ("../etc", "a/b", ".hidden", "x" * 129):
        with pytest.raises(AdapterNotFound):
            names.adapter_for(bad)


def test_without_adapters_only_the_model_is_served():
    names = AdapterNames.from_spec("tiny", None)
    with pytest.raises(AdapterNotFound) as err:
        names.adapter_for("tiny:a")
    assert err.value.status_code == 404 and err.value.code == "model_not_found"


def test_adapter_sources():
    lora = LoraSpec.model_validate({**LORA, "dynamicSource": "pvc://adapters/tenants/"})
    assert adapter_source(lora, "sql") == ("hf://org/sql-lora", "v2", True)
    assert adapter_source(lora, "acme") == ("pvc://adapters/tenants/acme", None, False)
    assert str(mounted_path("pvc://adapters/tenants/acme")) == "/mnt/models/adapters/tenants/acme"
    assert str(mounted_path("file:///srv/lora/x")) == "/srv/lora/x"
    assert mounted_path("s3://b/x") is None


def test_errors_carry_their_http_status():
    assert (AdapterRejected("x").status_code, AdapterRejected("x").code) == (400, "invalid_adapter")


# ------------------------------------------------------------------ routing


@pytest.mark.parametrize("here, elsewhere, expected", [
    ({"a"}, {"r2": ["a"]}, True),       # held here: no hop
    (set(), {"r2": ["a"]}, False),      # held by another: Serve's router sends it there
    (set(), {"r2": ["b"]}, True),       # held by none: loaded here, no hop
    (set(), {}, True),
])
def test_serve_here(here, elsewhere, expected):
    assert serve_here("a", here, elsewhere) is expected


@pytest.mark.asyncio
async def test_replica_reads_the_others_only_for_adapters_it_does_not_hold():
    reads = []

    def peers():
        reads.append(1)
        return {"r2": ["b"]}

    adapters = ReplicaAdapters(AdapterNames("tiny", ("a", "b")), card=lambda name: name, peers=peers)
    adapters.resident["a"] = 0.1
    await adapters.look_around("a")
    assert reads == []
    await adapters.look_around("b")
    await adapters.look_around("b")  # within the view's lifetime: not read again
    assert reads == [1]
    assert adapters.serve_here("a") and not adapters.serve_here("b")
    assert adapters.listed() == ["a", "b"]


def test_cards_list_listed_and_held_adapters_only():
    adapters = ReplicaAdapters(AdapterNames("tiny", ("a",), dynamic=True), card=lambda name: {"id": name})
    adapters.resident["dyn-1"] = 0.2
    assert adapters.listed() == ["a", "dyn-1"]
    assert adapters.card("dyn-1") == {"id": "dyn-1"}
    with pytest.raises(AdapterNotFound):
        adapters.card("dyn-2")


# ------------------------------------------------------------------ engine and Serve settings


def test_lora_engine_and_serve_settings_pass_rays_llm_config():
    md = deployment(lora={**LORA, "maxAdapters": 2, "maxCpuAdapters": 6})
    config = build_llm_config(md, builtin_dir="/cache/tiny")
    kwargs = config["engine_kwargs"]
    assert (kwargs["enable_lora"], kwargs["max_lora_rank"], kwargs["max_loras"], kwargs["max_cpu_loras"]) == (
        True, 8, 2, 6)
    llm_config = LLMConfig(**config)
    multiplex = llm_config.multiplex_config()
    assert multiplex is not None and multiplex.max_num_models_per_replica == 6  # what vLLM keeps in CPU memory
    assert llm_config.lora_config.dynamic_lora_loading_path is None  # sources resolve in the replica


def test_without_lora_no_lora_settings():
    config = build_llm_config(deployment(), builtin_dir="/cache/tiny")
    assert "enable_lora" not in config["engine_kwargs"] and "lora_config" not in config


def test_the_builtin_adapter_config_is_the_one_the_spec_tests_assume():
    from shardserve.builtin.tiny_adapters import adapter_config
    from tests.test_lora_spec import ADAPTER_CONFIG

    assert adapter_config("tiny-a") == adapter_config("tiny-b") == ADAPTER_CONFIG


def test_status_shows_the_adapters_of_running_replicas_only():
    from shardserve.local.status import build_status_row, format_status

    llm = {"replicas": [{"replica_id": "r1", "state": "RUNNING"}, {"replica_id": "r2", "state": "RUNNING"}],
           "target_num_replicas": 2}
    row = build_status_row("tiny", {"status": "RUNNING"}, llm, None, None,
                           {"r1": ["tiny-a"], "r2": [], "gone": ["tiny-b"]})
    assert row["adapters"] == {"r1": ["tiny-a"], "r2": []}
    assert format_status([row]).splitlines()[1:] == ["  replica r1 holds adapters: tiny-a",
                                                     "  replica r2 holds adapters: none"]
