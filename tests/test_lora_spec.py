"""spec.lora and adapter_config.json checks: what a spec accepts, and why an
adapter's files do not fit (each problem names the adapter and the field)."""

import json
from pathlib import Path

import pytest
import yaml

from shardserve.api.adapter_config import check_adapter_config, check_local_adapters, read_adapter_config
from shardserve.api.engine_args import check_engine_args
from shardserve.api.lora_spec import LoraSpec
from shardserve.api.spec import ModelSpec
from shardserve.api.validation import SpecError, check_servable_here, parse_deployment

TINY = Path(__file__).resolve().parents[1] / "manifests" / "examples" / "tiny-cpu.yaml"
LORA = {"maxRank": 8, "adapters": [{"name": "tiny-a", "source": "builtin://tiny-a"},
                                   {"name": "sql", "source": "hf://org/sql-lora", "revision": "v2"}]}
TINY_MODEL = ModelSpec(id="tiny", source="builtin://tiny")
HF_MODEL = ModelSpec(id="llama", source="hf://meta-llama/Llama-3.1-8B-Instruct")
# builtin://tiny-a's config (shardserve.builtin.tiny_adapters), as a fine-tune would ship it.
ADAPTER_CONFIG = {
    "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": 8, "lora_alpha": 16, "lora_dropout": 0.0,
    "target_modules": ["q_proj", "v_proj"], "bias": "none", "fan_in_fan_out": False, "base_model_name_or_path": "tiny",
}


def deployment(**spec_changes):
    doc = yaml.safe_load(TINY.read_text())
    doc["spec"].update(spec_changes)
    return parse_deployment(doc)


def good_config(**changes):
    return {**ADAPTER_CONFIG, **changes}


# ------------------------------------------------------------------ spec


def test_lora_defaults_and_lookup():
    lora = deployment(lora=LORA).spec.lora
    assert (lora.max_rank, lora.max_adapters, lora.max_cpu_adapters) == (8, 1, 4)
    assert lora.find("sql").revision == "v2" and lora.find("nope") is None


def test_engine_args_cannot_set_what_spec_lora_owns():
    problems = check_engine_args({"enable_lora": True, "max_loras": 4, "lora_modules": ["a=/x"]})
    assert len(problems) == 3
    assert any("spec.lora.maxAdapters" in p for p in problems)
    assert any("spec.lora.adapters" in p for p in problems)


# ------------------------------------------------------------------ adapter_config.json


def test_builtin_adapter_config_fits_the_tiny_model():
    assert check_adapter_config("tiny-a", good_config(), LoraSpec.model_validate(LORA), TINY_MODEL) == []


@pytest.mark.parametrize("change, field", [
    ({"r": 16}, "r: rank 16 is above spec.lora.maxRank (8)"),
    ({"r": 0}, "r: must be a positive integer"),
    ({"r": "8"}, "r: must be a positive integer"),
    ({"peft_type": "IA3"}, "peft_type: 'IA3' is not LORA"),
    ({"target_modules": []}, "target_modules: must name the layers"),
    ({"base_model_name_or_path": "other-model"}, "base_model_name_or_path: 'other-model' is not the served model"),
])
def test_adapter_config_problems_name_the_adapter_and_field(change, field):
    problems = check_adapter_config("tiny-a", good_config(**change), LoraSpec.model_validate(LORA), TINY_MODEL)
    assert len(problems) == 1
    assert problems[0].startswith("adapter 'tiny-a': adapter_config.json ") and field in problems[0], problems


@pytest.mark.parametrize("base, ok", [
    ("meta-llama/Llama-3.1-8B-Instruct", True),
    ("META-LLAMA/llama-3.1-8b-instruct", True),
    ("/home/me/models/Llama-3.1-8B-Instruct/", True),  # trained from a local copy
    ("meta-llama/Llama-3.1-70B-Instruct", False),
])
def test_base_model_is_compared_where_both_name_it_alike(base, ok):
    config = good_config(base_model_name_or_path=base)
    problems = check_adapter_config("a", config, LoraSpec.model_validate(LORA), HF_MODEL)
    assert (problems == []) is ok, problems


def test_base_model_is_not_compared_with_a_storage_path():
    s3_model = ModelSpec(id="llama", source="s3://bucket/weights/llama3")
    config = good_config(base_model_name_or_path="meta-llama/Llama-3.1-8B-Instruct")
    assert check_adapter_config("a", config, LoraSpec.model_validate(LORA), s3_model) == []


def test_builtin_base_matches_its_recipe_directory():
    lora = LoraSpec.model_validate(LORA)
    for base in ("tiny", "/cache/models/tiny-dec903b89c8f"):
        assert check_adapter_config("a", good_config(base_model_name_or_path=base), lora, TINY_MODEL) == []
    assert check_adapter_config("a", good_config(base_model_name_or_path="/m/tiny-big"), lora, TINY_MODEL)


def test_unreadable_configs_say_why(tmp_path):
    assert read_adapter_config("a", tmp_path)[1] == f"adapter 'a': no adapter_config.json in {tmp_path}"
    (tmp_path / "adapter_config.json").write_text("{not json")
    assert "is not JSON" in read_adapter_config("a", tmp_path)[1]


def test_run_refuses_a_file_adapter_that_does_not_fit(tmp_path):
    (tmp_path / "adapter_config.json").write_text(json.dumps(good_config(r=64)))
    md = deployment(lora={"maxRank": 8, "adapters": [{"name": "big", "source": f"file://{tmp_path}"},
                                                     {"name": "gone", "source": "file:///nowhere/x"}]})
    problems = check_servable_here(md)
    assert problems == [
        "spec.lora.adapters: adapter 'big': adapter_config.json r: rank 64 is above spec.lora.maxRank (8)",
        "spec.lora.adapters: adapter 'gone': no adapter_config.json in /nowhere/x",
    ]
    assert check_local_adapters(None, TINY_MODEL) == []


def test_spec_errors_name_the_field():
    with pytest.raises(SpecError) as err:
        deployment(lora={"adapters": [{"name": "tiny", "source": "builtin://tiny-a"}]})
    assert err.value.problems == ["spec: an adapter in lora.adapters is named 'tiny', as model.id is"]
