"""spec.tenants: per-key quotas and priority. A tenant is an API key's entry
name in spec.serving.apiKeySecret (locally, the NAME of NAME=KEY in
SHARDSERVE_API_KEYS); keys without a tenant entry get `default`."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field, model_validator

from shardserve.api.spec_model import SpecModel

Priority = Literal["high", "normal", "low"]
# vLLM's priority scheduling runs lower values first; 0 is a request's default.
VLLM_PRIORITY: dict[str, int] = {"high": -10, "normal": 0, "low": 10}
TENANT_NAME_PATTERN = r"^[-._a-zA-Z0-9]+$"  # a Secret's data key


class TenantLimits(SpecModel):
    requests_per_minute: Optional[int] = Field(
        default=None, ge=1, le=10_000_000, description="Requests a minute (a bucket refilled evenly). Unset: no limit.",
    )
    tokens_per_minute: Optional[int] = Field(
        default=None, ge=1, le=10_000_000_000,
        description="Prompt plus completion tokens a minute. A request debits its estimate when admitted (its "
        "prompt's bytes / 4, plus max_tokens or serving.maxTokens) and settles against the usage it reports. "
        "Unset: no limit.",
    )
    max_concurrent_requests: Optional[int] = Field(
        default=None, ge=1, le=1_000_000, description="Requests in flight at once. Unset: no limit.",
    )
    priority: Priority = Field(
        default="normal",
        description="Scheduling class in vLLM's queue: under load, high overtakes normal and normal overtakes "
        "low. A request's own priority field is replaced by its tenant's.",
    )


class TenantSpec(TenantLimits):
    name: str = Field(
        min_length=1, max_length=253, pattern=TENANT_NAME_PATTERN,
        description="The API key's entry name in serving.apiKeySecret (NAME in NAME=KEY locally).",
    )


class TenantsSpec(SpecModel):
    default: TenantLimits = Field(
        default_factory=TenantLimits, description="Limits of keys no entry below names.",
    )
    keys: list[TenantSpec] = Field(default_factory=list, max_length=1000, description="Limits by key name.")

    @model_validator(mode="after")
    def _names_unique(self) -> TenantsSpec:
        names = [t.name for t in self.keys]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"tenant names must be unique; repeated: {', '.join(repeated)}")
        return self

    def limits_for(self, name: Optional[str]) -> TenantLimits:
        return next((t for t in self.keys if t.name == name), self.default)
