"""The engine-argument catalog, read from the installed vLLM.

`shardserve engine-args --write` stores it beside the spec's checks
(api/engine_args.json), which then need no vLLM; a test fails when the
stored catalog drifts from the installed release.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any

_SIMPLE = {bool: "bool", int: "int", float: "float", str: "str", list: "list", dict: "dict"}


def _kind(annotation: Any) -> Any:
    """Reduce a type annotation to what a YAML value can be checked against."""
    if isinstance(annotation, str):
        return "any"
    origin = typing.get_origin(annotation)
    if annotation in _SIMPLE:
        return _SIMPLE[annotation]
    if origin is typing.Literal:
        return {"choices": list(typing.get_args(annotation))}
    if origin in (list, tuple, set):
        return "list"
    if origin is dict:
        return "dict"
    if origin in (typing.Union, types.UnionType):
        kinds = [_kind(a) for a in typing.get_args(annotation) if a is not type(None)]
        return kinds[0] if len(kinds) == 1 else "any"
    return "any"


def build_catalog() -> dict[str, Any]:
    """Reads the installed vLLM (imports it: slow): its engine arguments, the
    OpenAI front end's arguments (Ray Serve LLM passes both through
    engine_kwargs) and the names its tool-call and reasoning parser
    registries know."""
    from vllm import __version__
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.entrypoints.launchers.cli_args import FrontendArgs
    from vllm.reasoning import ReasoningParserManager
    from vllm.tool_parsers import ToolParserManager

    args = {f.name: _kind(f.type) for f in dataclasses.fields(AsyncEngineArgs)}
    frontend = {f.name: _kind(f.type) for f in dataclasses.fields(FrontendArgs)}
    return {
        "vllm_version": __version__,
        "args": dict(sorted(args.items())),
        "frontend_args": dict(sorted(frontend.items())),
        "tool_call_parsers": sorted({*ToolParserManager.lazy_parsers, *ToolParserManager.tool_parsers}),
        "reasoning_parsers": sorted({*ReasoningParserManager.lazy_parsers, *ReasoningParserManager.reasoning_parsers}),
    }
