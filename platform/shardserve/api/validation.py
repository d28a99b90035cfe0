"""Loading a ModelDeployment file and collecting every problem with it.

Each problem names the field path (`spec.parallelism.tensor`) and the rule,
so the CLI, the operator's SpecValid condition and admission say the same.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Optional

import yaml
from pydantic import ValidationError
from pydantic_core import ErrorDetails

from shardserve.api.adapter_config import check_local_adapters
from shardserve.api.chat_template import check_chat_template
from shardserve.api.engine_args import check_engine_args, check_parser_name
from shardserve.api.placement import PlacementError, check_model_shape, placement_for
from shardserve.api.spec import ModelDeployment
from shardserve.api.yaml_loading import safe_load_all

_PYDANTIC_PREFIXES = ("Value error, ", "Assertion failed, ")


class SpecError(ValueError):
    """A ModelDeployment is invalid; `problems` lists each reason."""

    def __init__(self, problems: list[str], source: str = ""):
        self.problems = problems
        self.source = source
        where = f"{source}: " if source else ""
        super().__init__(where + "invalid ModelDeployment:\n  " + "\n  ".join(problems))


def field_path(loc: Sequence[int | str], skip: Callable[[str], bool] = lambda part: False) -> str:
    """A pydantic error location as a path: ('spec', 'models', 0, 'id') -> spec.models[0].id.

    `skip` drops names that are not fields (a root, the type names unions add).
    """
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif not skip(part):
            out += f".{part}" if out else part
    return out


def _path(loc: Sequence[int | str]) -> str:
    return field_path(loc) or "(document)"


def _describe(error: ErrorDetails) -> str:
    msg = error["msg"]
    for prefix in _PYDANTIC_PREFIXES:
        msg = msg.removeprefix(prefix)
    kind = error["type"]
    if kind == "extra_forbidden":
        return f"{_path(error['loc'])}: unknown field"
    if kind == "missing":
        return f"{_path(error['loc'])}: required field is missing"
    shown = "" if kind.startswith("value_error") else f" (got {error.get('input')!r})"
    return f"{_path(error['loc'])}: {msg}{shown}"


def model_config_for(md: ModelDeployment) -> Optional[dict[str, Any]]:
    """The model's config.json when it can be read without downloading."""
    model = md.spec.model
    if model.scheme == "builtin":
        from shardserve.builtin.tiny import TINY_CONFIG

        return TINY_CONFIG
    if model.scheme == "file":
        config = Path("/" + model.location.lstrip("/")) / "config.json"
        if config.is_file():
            try:
                parsed: dict[str, Any] = json.loads(config.read_text())
                return parsed
            except (OSError, ValueError):
                return None
    return None


def check_chat(md: ModelDeployment) -> list[str]:
    """Parser names against vLLM's registries; an inline template must compile."""
    chat, problems = md.spec.chat, []
    if chat is None:
        return []
    if chat.tool_calling is not None:
        problems += check_parser_name(chat.tool_calling.parser, "tool_call_parsers", "spec.chat.toolCalling.parser")
    if chat.reasoning_parser is not None:
        problems += check_parser_name(chat.reasoning_parser, "reasoning_parsers", "spec.chat.reasoningParser")
    if chat.template is not None and chat.template.inline is not None:
        problems += filter(None, [check_chat_template(chat.template.inline, "spec.chat.template.inline")])
    return problems


def resolve_template_file(md: ModelDeployment, base_dir: Optional[Path]) -> tuple[ModelDeployment, list[str]]:
    """A file template read relative to the spec file: its absolute path, and
    whether it can be read and compiles. Without a spec file (a cluster) there
    is nothing to read it relative to."""
    chat = md.spec.chat
    if chat is None or chat.template is None or chat.template.file is None:
        return md, []
    where = "spec.chat.template.file"
    if base_dir is None:
        return md, [f"{where}: a file is read by shardserve run next to the spec file; "
                    "in a cluster use spec.chat.template.inline or configMap"]
    path = (base_dir / chat.template.file).resolve()
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        return md, [f"{where}: cannot read {path}: {getattr(err, 'strerror', None) or err}"]
    problem = check_chat_template(text, f"{where} ({path})")
    template = chat.template.model_copy(update={"file": str(path)})
    resolved = md.model_copy(update={"spec": md.spec.model_copy(
        update={"chat": chat.model_copy(update={"template": template})})})
    return resolved, [problem] if problem else []


def check_deployment(md: ModelDeployment) -> list[str]:
    """Rules across fields and against vLLM that pydantic alone cannot see."""
    spec = md.spec
    problems = check_engine_args(spec.engine.args) + check_chat(md)
    if spec.tenants is not None and spec.engine.args.get("scheduling_policy", "priority") != "priority":
        problems.append("spec.engine.args.scheduling_policy: spec.tenants needs vLLM's priority scheduling "
                        "(tenants' priority classes order the queue); remove it or set it to priority")
    try:
        placement_for(spec)
    except PlacementError as err:
        problems.append(str(err))
    problems += check_model_shape(spec.parallelism.tensor, spec.parallelism.pipeline, model_config_for(md))
    return problems


def check_servable_here(md: ModelDeployment) -> list[str]:
    """What a cluster accepts but `shardserve run` cannot serve: a paused
    deployment, a template in a ConfigMap, an adapter file that is missing or wrong."""
    problems = []
    if md.spec.autoscaling is None and md.spec.replicas == 0:
        problems.append("spec.replicas: 0 pauses the deployment in a cluster (no Ray pods, no accelerators held); "
                        "shardserve run serves at least one replica: set replicas >= 1")
    chat = md.spec.chat
    if chat is not None and chat.template is not None and chat.template.config_map is not None:
        problems.append("spec.chat.template.configMap: ConfigMaps exist in a cluster; "
                        "shardserve run takes spec.chat.template.inline or file")
    return problems + check_local_adapters(md.spec.lora, md.spec.model)


def check_servable_in_cluster(md: ModelDeployment) -> list[str]:
    """What `shardserve run` accepts but a cluster cannot serve: a template file on this machine."""
    chat = md.spec.chat
    if chat is not None and chat.template is not None and chat.template.file is not None:
        return ["spec.chat.template.file: a file on this machine does not reach the cluster; "
                "use spec.chat.template.inline or configMap"]
    return []


def parse_deployment(data: Any, source: str = "", base_dir: Optional[Path] = None) -> ModelDeployment:
    """Validates a parsed document; raises SpecError listing every problem.
    `base_dir` is the spec file's directory, for files the spec names."""
    if not isinstance(data, dict):
        raise SpecError([f"(document): must be a mapping with apiVersion, kind, metadata, spec; "
                         f"got {type(data).__name__}"], source)
    try:
        md = ModelDeployment.model_validate(data)
    except ValidationError as err:
        raise SpecError([_describe(e) for e in err.errors()], source) from None
    md, problems = resolve_template_file(md, base_dir)
    problems += check_deployment(md)
    if problems:
        raise SpecError(problems, source)
    return md


def load_file(path: str | Path) -> ModelDeployment:
    """Reads and validates a ModelDeployment YAML file."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise SpecError([f"cannot read file: {err.strerror}"], str(path)) from None
    try:
        docs = [d for d in safe_load_all(text) if d is not None]
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise SpecError([f"(document): not valid YAML{at}: {getattr(err, 'problem', err)}"], str(path)) from None
    if len(docs) != 1:
        raise SpecError([f"(document): expected one ModelDeployment, found {len(docs)} documents"], str(path))
    return parse_deployment(docs[0], str(path), base_dir=path.parent)
