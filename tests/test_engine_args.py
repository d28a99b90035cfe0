"""spec.engine.args are checked against vLLM's EngineArgs."""

import json

from shardserve.api.engine_args import CATALOG_PATH, check_engine_args
from shardserve.serve.engine_catalog import build_catalog


def test_catalog_matches_installed_vllm():
    # Regenerate with: shardserve engine-args --write
    assert json.loads(CATALOG_PATH.read_text()) == build_catalog()


def test_known_arguments_of_the_right_type_pass():
    assert check_engine_args({"enable_prefix_caching": True, "max_num_batched_tokens": 2048, "block_size": 16}) == []


def test_typo_suggests_the_real_name():
    [problem] = check_engine_args({"max_num_batched_tokenz": 1})
    assert "did you mean 'max_num_batched_tokens'" in problem


def test_wrong_type_and_bad_choice():
    problems = check_engine_args({"max_num_batched_tokens": "many", "enable_prefix_caching": 1})
    assert len(problems) == 2 and all("must be a" in p for p in problems)


def test_typed_fields_cannot_be_set_twice():
    [problem] = check_engine_args({"max_model_len": 4096})
    assert "set by spec.engine.maxModelLen" in problem
