"""spec.lora: LoRA adapters of the served model, loaded on demand into each
replica's vLLM engine and addressed by name as the request's `model`."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field, field_validator, model_validator

from shardserve.api.sources import BUILTIN_ADAPTERS, DYNAMIC_SCHEMES, check_source
from shardserve.api.spec_model import SpecModel

# vLLM's LoRAConfig.max_lora_rank values (vllm/config/lora.py, MaxLoRARanks, vLLM 0.29).
MaxRank = Literal[1, 8, 16, 32, 64, 128, 256, 320, 512]
# A name is a request's `model` and a directory under dynamicSource: no '/' and
# no ':' (`<model id>:<adapter>` is the other way to ask for one).
ADAPTER_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
MAX_ADAPTERS_LISTED = 256


class AdapterSpec(SpecModel):
    name: str = Field(
        min_length=1, max_length=128, pattern=ADAPTER_NAME_PATTERN,
        description="Name clients pass as `model` (or as `<model id>:<name>`).",
    )
    source: str = Field(
        description="Where the adapter's files (adapter_config.json and weights) are: hf://ORG/NAME, "
        "s3://BUCKET/PATH, gs://BUCKET/PATH, pvc://CLAIM/PATH, file:///ABS/PATH, or builtin://tiny-a "
        "(and tiny-b), test adapters of builtin://tiny.",
    )
    revision: Optional[str] = Field(
        default=None, min_length=1, max_length=256, description="Hugging Face revision for hf:// sources.",
    )

    @field_validator("source")
    @classmethod
    def _check_source(cls, value: str) -> str:
        return check_source(value, BUILTIN_ADAPTERS, kind="adapter")

    @property
    def scheme(self) -> str:
        return self.source.partition("://")[0]


class LoraSpec(SpecModel):
    adapters: list[AdapterSpec] = Field(
        default_factory=list, max_length=MAX_ADAPTERS_LISTED,
        description="Adapters served by name, each loaded on a replica at its first request there.",
    )
    dynamic_source: Optional[str] = Field(
        default=None,
        description="A prefix (s3://, gs://, pvc:// or file://) under which any adapter can be asked for "
        "by its directory name, without listing it. A listed name wins over a directory of the same name.",
    )
    max_rank: MaxRank = Field(
        default=16, description="Largest LoRA rank served (vLLM max_lora_rank); it sizes each adapter slot.",
    )
    max_adapters: int = Field(
        default=1, ge=1, le=256,
        description="Adapters one engine batch can mix (vLLM max_loras): each holds a slot of accelerator "
        "memory sized by maxRank.",
    )
    max_cpu_adapters: int = Field(
        default=4, ge=1, le=1024,
        description="Adapters each replica keeps loaded (in CPU memory, vLLM max_cpu_loras; at least "
        "maxAdapters). Past it, the least recently used is evicted, and loaded again on its next request.",
    )
    credentials_secret: Optional[str] = Field(
        default=None,
        description="Secret with download credentials for adapter sources (HF_TOKEN, AWS_*, GOOGLE_*). "
        "Default: spec.model.credentialsSecret.",
    )

    @field_validator("dynamic_source")
    @classmethod
    def _check_dynamic(cls, value: Optional[str]) -> Optional[str]:
        if value is None:
            return None
        check_source(value, (), kind="adapter directory")
        if value.partition("://")[0] not in DYNAMIC_SCHEMES:
            raise ValueError(f"{value!r}: a dynamic source is a prefix on " + ", ".join(f"{s}://" for s in DYNAMIC_SCHEMES))
        return value

    @model_validator(mode="after")
    def _consistent(self) -> LoraSpec:
        if not self.adapters and self.dynamic_source is None:
            raise ValueError("list adapters or set dynamicSource (or both)")
        names = [a.name for a in self.adapters]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"adapter names must be unique; repeated: {', '.join(repeated)}")
        if self.max_cpu_adapters < self.max_adapters:
            raise ValueError(f"maxCpuAdapters ({self.max_cpu_adapters}) must be >= maxAdapters ({self.max_adapters})")
        return self

    def find(self, name: str) -> Optional[AdapterSpec]:
        return next((a for a in self.adapters if a.name == name), None)
