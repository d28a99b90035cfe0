"""spec.chat: the options of vLLM's chat front end (template, tool calling,
reasoning) and the message roles a request may use."""

from __future__ import annotations

from typing import Annotated, Optional

from pydantic import Field, StringConstraints, model_validator
from pydantic.alias_generators import to_snake

from shardserve.api.spec_model import SpecModel

MAX_CHAT_TEMPLATE_CHARS = 64 * 1024


class ConfigMapKeyRef(SpecModel):
    name: str = Field(
        min_length=1, max_length=253, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
        description="ConfigMap in the ModelDeployment's namespace.",
    )
    key: str = Field(
        min_length=1, max_length=253, pattern=r"^[-._a-zA-Z0-9]+$", description="Data key holding the template.",
    )


class ChatTemplateSpec(SpecModel):
    inline: Optional[str] = Field(
        default=None, min_length=1, max_length=MAX_CHAT_TEMPLATE_CHARS, description="The Jinja template itself.",
    )
    file: Optional[str] = Field(
        default=None, min_length=1, max_length=4096,
        description="A file holding the template, relative to the spec file (shardserve run only).",
    )
    config_map: Optional[ConfigMapKeyRef] = Field(
        default=None,
        description="A ConfigMap key holding the template (cluster only); the operator mounts it in the Ray "
        "pods, and a changed template reaches replicas as they restart.",
    )

    @model_validator(mode="after")
    def _one_source(self) -> ChatTemplateSpec:
        given = [name for name in ("inline", "file", "configMap") if getattr(self, to_snake(name)) is not None]
        if len(given) != 1:
            raise ValueError(f"set exactly one of inline, file and configMap (got {', '.join(given) or 'none'})")
        return self


class ToolCallingSpec(SpecModel):
    parser: str = Field(
        min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
        description="vLLM tool-call parser that turns the model's output into tool_calls; it must match the "
        "model's chat format (e.g. hermes, llama3_json, mistral, qwen3_xml). Checked against vLLM's registry.",
    )
    auto_tool_choice: bool = Field(
        default=True,
        description="Let the model decide when to call a tool (tool_choice auto). Named and required "
        "tool choices work either way: structured output constrains the arguments.",
    )


# The message roles OpenAI's chat API defines; vLLM passes any other to the
# chat template, where most templates drop or misrender it.
OPENAI_CHAT_ROLES = ("system", "developer", "user", "assistant", "tool", "function")


class ChatSpec(SpecModel):
    extra_roles: list[Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")]] = Field(
        default_factory=list, max_length=32,
        description="Message roles accepted besides OpenAI's (system, developer, user, assistant, tool, function), "
        "for a chat template that knows more (e.g. ipython). Other roles get HTTP 400.",
    )
    template: Optional[ChatTemplateSpec] = Field(
        default=None, description="Replace the model's chat template (checked to compile when the spec loads).",
    )
    tool_calling: Optional[ToolCallingSpec] = Field(default=None, description="Tool calling on /v1/chat/completions.")
    reasoning_parser: Optional[str] = Field(
        default=None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
        description="vLLM reasoning parser: the model's reasoning goes to reasoning_content instead of content "
        "(e.g. deepseek_r1, qwen3). Checked against vLLM's registry.",
    )
