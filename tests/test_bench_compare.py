"""The comparison's pure parts: the bare vLLM command (checked by vLLM's own
parser), the round order, and the ratios with their spread."""

import dataclasses
from pathlib import Path

import pytest

from shardserve.api.placement import placement_for
from shardserve.api.validation import load_file, parse_deployment
from shardserve.bench.compare import BARE, SHARDSERVE, compute_comparison, format_summary, plan_rounds
from shardserve.bench.servers import build_engine_flags, build_vllm_command, build_vllm_env
from shardserve.serve.llm_config import build_engine_kwargs

TINY = Path(__file__).resolve().parents[1] / "manifests" / "examples" / "tiny-cpu.yaml"


def test_bare_vllm_gets_the_replicas_engine_arguments():
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    md = load_file(str(TINY))
    command = build_vllm_command(md, "/models/tiny", 23456)
    assert command[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]
    args = make_arg_parser(FlexibleArgumentParser()).parse_args(command[3:])
    assert (args.model, args.served_model_name, args.port) == ("/models/tiny", ["tiny"], 23456)
    for key, value in build_engine_kwargs(md, placement_for(md.spec)).items():
        parsed = getattr(args, key)
        if isinstance(value, dict) and dataclasses.is_dataclass(parsed):  # a config section vLLM parses into its class
            parsed = {name: getattr(parsed, name) for name in value}
        assert parsed == value, key
    assert args.kv_cache_memory_bytes == 256 * 2**20 and args.enforce_eager is False


def test_engine_flags_for_each_value_type():
    flags = build_engine_flags({"enforce_eager": True, "enable_prefix_caching": False, "max_num_seqs": 4,
                                "compilation_config": {"level": 0}, "seed": None, "model": "ignored"})
    assert flags == ["--enforce-eager", "--no-enable-prefix-caching", "--max-num-seqs", "4",
                     "--compilation-config", '{"level": 0}']


def test_bare_vllm_gets_the_replicas_cpu_pinning():
    doc = load_file(str(TINY)).model_dump(by_alias=True, exclude_none=True)
    doc["spec"]["parallelism"]["tensor"] = 2
    env = build_vllm_env(parse_deployment(doc), "/models/tiny")
    assert env == {"VLLM_CPU_OMP_THREADS_BIND": "0|1"}
    assert build_vllm_env(load_file(str(TINY)), "/models/tiny") == {}


def test_rounds_alternate_which_server_goes_first():
    assert plan_rounds(3) == [(BARE, SHARDSERVE), (SHARDSERVE, BARE), (BARE, SHARDSERVE)]


def level(tok_s, ttft_ms, tpot_ms, failed=0):
    return {"output_throughput": tok_s, "ttft": {"median_ms": ttft_ms}, "tpot": {"median_ms": tpot_ms},
            "failed": failed}


def test_ratios_pair_servers_within_each_round():
    rounds = [
        {BARE: {1: level(600, 10, 1.6), 16: level(1000, 40, 15)}, SHARDSERVE: {1: level(540, 20, 1.8), 16: level(900, 50, 16)}},
        {BARE: {1: level(500, 12, 2.0), 16: level(1100, 42, 14)}, SHARDSERVE: {1: level(500, 14, 2.0), 16: level(1045, 45, 14)}},
        {BARE: {1: level(550, 11, 1.8), 16: level(1000, 41, 15)},
         SHARDSERVE: {1: level(440, 31, 2.2), 16: level(1000, 41, 15, failed=2)}},
    ]
    summary = compute_comparison(rounds, [1, 16])
    one = summary[1]
    assert one["throughput_ratio"]["values"] == pytest.approx([0.9, 1.0, 0.8])
    assert one["throughput_ratio"]["median"] == pytest.approx(0.9)
    assert (one["throughput_ratio"]["min"], one["throughput_ratio"]["max"]) == pytest.approx((0.8, 1.0))
    assert one["ttft_p50_added_ms"]["values"] == pytest.approx([10, 2, 20])
    assert one["ttft_p50_added_ms"]["median"] == pytest.approx(10)
    assert one[BARE]["output_throughput"] == 550 and one[SHARDSERVE]["output_throughput"] == 500
    assert summary[16]["throughput_ratio"]["median"] == pytest.approx(0.95)
    assert summary[16]["failed"] == 2 and one["failed"] == 0
    text = format_summary(summary, 3)
    assert "c=1   output tok/s 0.900x [0.800, 1.000]" in text
    assert "TTFT p50 +10.0 ms [+2.0, +20.0]" in text
    assert "2 requests FAILED" in text
