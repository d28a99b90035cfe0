"""The base of every ModelDeployment spec model."""

from __future__ import annotations

from pydantic import AliasGenerator, BaseModel, ConfigDict
from pydantic.alias_generators import to_camel


class SpecModel(BaseModel):
    """camelCase in YAML (Kubernetes convention), snake_case in Python;
    unknown fields are rejected so a typo fails when the file is loaded."""

    model_config = ConfigDict(
        extra="forbid",
        alias_generator=AliasGenerator(alias=to_camel),
        populate_by_name=True,
        validate_default=True,
    )
