"""spec.chat and vLLM's front-end arguments: checked when the spec loads,
passed to Ray Serve LLM as engine_kwargs (it routes them to vLLM's front end)."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from shardserve.api.engine_args import load_catalog
from shardserve.api.validation import (
    SpecError,
    check_servable_here,
    check_servable_in_cluster,
    load_file,
    parse_deployment,
)
from shardserve.serve.llm_config import build_llm_config

ROOT = Path(__file__).resolve().parents[1]
TINY = yaml.safe_load((ROOT / "manifests" / "examples" / "tiny-cpu.yaml").read_text())
TEMPLATE = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"


def with_chat(chat: dict, **engine_args) -> dict:
    doc = copy.deepcopy(TINY)
    doc["spec"]["chat"] = chat
    if engine_args:
        doc["spec"].setdefault("engine", {})["args"] = engine_args
    return doc


def problems_of(doc: dict) -> list[str]:
    with pytest.raises(SpecError) as err:
        parse_deployment(doc)
    return err.value.problems


def test_tool_calling_and_reasoning_reach_the_engine_kwargs():
    md = parse_deployment(with_chat({"template": {"inline": TEMPLATE}, "toolCalling": {"parser": "hermes"},
                                     "reasoningParser": "deepseek_r1"}))
    kwargs = build_llm_config(md, builtin_dir="/models/tiny")["engine_kwargs"]
    assert kwargs["chat_template"] == TEMPLATE
    assert kwargs["tool_call_parser"] == "hermes"
    assert kwargs["enable_auto_tool_choice"] is True
    assert kwargs["reasoning_parser"] == "deepseek_r1"


def test_parser_names_come_from_vllms_registries():
    catalog = load_catalog()
    assert {"hermes", "llama3_json", "mistral"} <= set(catalog["tool_call_parsers"])
    assert {"deepseek_r1", "qwen3"} <= set(catalog["reasoning_parsers"])


@pytest.mark.parametrize("chat, expected", [
    ({"toolCalling": {"parser": "hermez"}},
     "spec.chat.toolCalling.parser: 'hermez' is not a vLLM tool-call parser (did you mean 'hermes'?)"),
    ({"reasoningParser": "deepseek-r1"},
     "spec.chat.reasoningParser: 'deepseek-r1' is not a vLLM reasoning parser (did you mean 'deepseek_r1'?)"),
    ({"template": {"inline": "{% for m in messages %}{{ m.content }}"}},
     "spec.chat.template.inline: the chat template does not compile: Unexpected end of template"),
    ({"template": {"inline": "{{ messages | no_such_filter }}"}},
     "spec.chat.template.inline: the chat template does not compile: No filter named 'no_such_filter'"),
    ({"template": {"inline": TEMPLATE, "file": "chat.jinja"}},
     "spec.chat.template: set exactly one of inline, file and configMap (got inline, file)"),
    ({"toolCalling": {"parser": "hermes", "autoChoice": True}}, "spec.chat.toolCalling.autoChoice: unknown field"),
])
def test_chat_problems_name_the_field_and_rule(chat, expected):
    problems = problems_of(with_chat(chat))
    assert any(p.startswith(expected) for p in problems), problems


@pytest.mark.parametrize("args, expected", [
    ({"tool_call_parser": "hermes"}, "spec.engine.args.tool_call_parser: set by spec.chat.toolCalling.parser"),
    ({"chat_template": "x"}, "spec.engine.args.chat_template: set by spec.chat.template"),
    ({"port": 9000}, "spec.engine.args.port: shardserve's HTTP server owns this; it is set by spec.serving.port"),
    ({"api_key": ["k"]}, "spec.engine.args.api_key: shardserve's HTTP server owns this"),
    ({"ssl_certfile": "/tls.crt"}, "spec.engine.args.ssl_certfile: shardserve's HTTP server owns this"),
    ({"enable_prompt_tokens_details": "yes"}, "spec.engine.args.enable_prompt_tokens_details: must be a bool"),
    ({"enable_promt_tokens_details": True},
     "spec.engine.args.enable_promt_tokens_details: not a vLLM engine or front-end argument "
     "(did you mean 'enable_prompt_tokens_details'?)"),
])
def test_front_end_arguments_are_checked_like_engine_arguments(args, expected):
    problems = problems_of(with_chat({}, **args))
    assert any(p.startswith(expected) for p in problems), problems


def test_a_front_end_argument_passes_through():
    md = parse_deployment(with_chat({}, enable_prompt_tokens_details=True, exclude_tools_when_tool_choice_none=True))
    kwargs = build_llm_config(md, builtin_dir="/models/tiny")["engine_kwargs"]
    assert kwargs["enable_prompt_tokens_details"] is True
    assert kwargs["exclude_tools_when_tool_choice_none"] is True


def test_a_template_file_is_read_next_to_the_spec(tmp_path):
    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "chat.jinja").write_text(TEMPLATE)
    spec = tmp_path / "md.yaml"
    spec.write_text(yaml.safe_dump(with_chat({"template": {"file": "templates/chat.jinja"}})))
    md = load_file(spec)
    assert md.spec.chat.template.file == str(tmp_path / "templates" / "chat.jinja")
    assert build_llm_config(md, builtin_dir="/m")["engine_kwargs"]["chat_template"] == TEMPLATE
    assert check_servable_here(md) == []
    assert check_servable_in_cluster(md) == [
        "spec.chat.template.file: a file on this machine does not reach the cluster; "
        "use spec.chat.template.inline or configMap"]


def test_a_template_file_that_is_missing_or_broken_is_refused_at_load(tmp_path):
    spec = tmp_path / "md.yaml"
    spec.write_text(yaml.safe_dump(with_chat({"template": {"file": "chat.jinja"}})))
    with pytest.raises(SpecError) as err:
        load_file(spec)
    assert err.value.problems[0].startswith(f"spec.chat.template.file: cannot read {tmp_path / 'chat.jinja'}")
    (tmp_path / "chat.jinja").write_text("{% if %}")
    with pytest.raises(SpecError) as err:
        load_file(spec)
    assert "the chat template does not compile" in err.value.problems[0]


def test_a_template_file_needs_a_spec_file():
    """The operator and Serve's controller get a document, not a file: nothing to read it relative to."""
    problems = problems_of(with_chat({"template": {"file": "chat.jinja"}}))
    assert problems[0].startswith("spec.chat.template.file: a file is read by shardserve run next to the spec file")


def test_a_config_map_template_is_for_clusters():
    md = parse_deployment(with_chat({"template": {"configMap": {"name": "templates", "key": "chat.jinja"}}}))
    assert check_servable_here(md) == [
        "spec.chat.template.configMap: ConfigMaps exist in a cluster; shardserve run takes spec.chat.template.inline "
        "or file"]
    kwargs = build_llm_config(md, builtin_dir="/m")["engine_kwargs"]
    assert kwargs["chat_template"] == "/etc/shardserve/chat-template/chat.jinja"


def test_validate_names_the_bad_parser_and_exits_2(tmp_path):
    spec = tmp_path / "md.yaml"
    spec.write_text(yaml.safe_dump(with_chat({"toolCalling": {"parser": "hermez"}})))
    out = subprocess.run([sys.executable, "-m", "shardserve.cli", "validate", str(spec)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert "spec.chat.toolCalling.parser: 'hermez' is not a vLLM tool-call parser (did you mean 'hermes'?)" in out.stderr


@pytest.mark.parametrize("given, expected", [
    (None, {"backend": "xgrammar", "disable_any_whitespace": True}),
    ({"backend": "guidance"}, {"backend": "guidance", "disable_any_whitespace": True}),
    ({"backend": "auto"}, {"backend": "auto"}),
    ({"disable_any_whitespace": False}, {"backend": "xgrammar", "disable_any_whitespace": False}),
])
def test_structured_output_is_compact_unless_the_spec_says_otherwise(given, expected):
    """vLLM's own config class is the judge: it refuses the whitespace switch with backend auto."""
    from vllm.config.structured_outputs import StructuredOutputsConfig

    md = parse_deployment(with_chat({}, **({"structured_outputs_config": given} if given else {})))
    config = build_llm_config(md, builtin_dir="/m")["engine_kwargs"]["structured_outputs_config"]
    assert config == expected
    StructuredOutputsConfig(**config)
