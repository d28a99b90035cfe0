"""The ModelDeployment API: one typed source of truth for the CLI, the
operator and the generated CRD.

Field names are camelCase in YAML (Kubernetes convention) and snake_case in
Python. Unknown fields are rejected so a typo fails when the file is loaded.
"""

from __future__ import annotations

import re
from typing import Any, Literal, Optional, get_args

from pydantic import AliasGenerator, ConfigDict, Field, field_validator, model_validator
from pydantic.alias_generators import to_camel

from shardserve.api.chat_spec import ChatSpec
from shardserve.api.kuberay import find_reserved_port
from shardserve.api.lora_spec import LoraSpec
from shardserve.api.quantity import check_quantity
from shardserve.api.sources import BUILTIN_MODELS, check_source
from shardserve.api.spec_model import SpecModel
from shardserve.api.tenant_spec import TenantsSpec

API_GROUP = "shardserve.dev"
API_VERSION = "v1alpha1"
KIND = "ModelDeployment"

# Names of children (RayService, its RayCluster, head Service, pods) add
# suffixes to the ModelDeployment's name; Kubernetes caps labels at 63.
MAX_NAME_LENGTH = 40
_DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


class ModelSpec(SpecModel):
    id: str = Field(
        min_length=1,
        max_length=128,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/-]*$",
        description="Name clients pass as `model` in OpenAI requests.",
    )
    source: str = Field(
        description="Where the weights come from: hf://ORG/NAME, s3://BUCKET/PATH, "
        "gs://BUCKET/PATH, pvc://CLAIM/PATH, file:///ABS/PATH or builtin://tiny.",
    )
    revision: Optional[str] = Field(
        default=None, description="Hugging Face revision (branch, tag or commit) for hf:// sources."
    )
    credentials_secret: Optional[str] = Field(
        default=None,
        description="Secret with download credentials (HF_TOKEN, AWS_*, GOOGLE_*), "
        "passed to replicas as environment variables.",
    )
    cache_size: Optional[str] = Field(
        default=None,
        description="Disk for downloaded weights on each worker pod (cluster only), as a quantity (e.g. "
        "'200Gi', about 1.2x the weights): the pod's weight cache is an emptyDir at HF_HOME limited to "
        "this size, and the pod requests it as ephemeral-storage. Unset: the cache volume has no limit "
        "and nothing is requested. Sources read in place (pvc://, file://, builtin://) need none.",
    )

    @field_validator("source")
    @classmethod
    def _check_source(cls, value: str) -> str:
        return check_source(value, BUILTIN_MODELS)

    @field_validator("cache_size")
    @classmethod
    def _cache_quantity(cls, value: Optional[str]) -> Optional[str]:
        return check_quantity(value)

    @property
    def scheme(self) -> str:
        return self.source.partition("://")[0]

    @property
    def location(self) -> str:
        return self.source.partition("://")[2]


class EngineSpec(SpecModel):
    max_model_len: Optional[int] = Field(
        default=None, ge=16, le=10_000_000,
        description="Context length (prompt + output tokens). Defaults to the model's own.",
    )
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field(
        default="auto", description="Weight and activation dtype."
    )
    max_num_seqs: Optional[int] = Field(
        default=None, ge=1, le=4096, description="Most sequences the engine batches in one step."
    )
    gpu_memory_utilization: Optional[float] = Field(
        default=None, gt=0, le=1,
        description="Fraction of accelerator memory vLLM may use (of RAM on CPU).",
    )
    kv_cache_memory: Optional[str] = Field(
        default=None,
        description="Fixed KV-cache size as a quantity (e.g. '512Mi'); overrides gpuMemoryUtilization.",
    )
    enforce_eager: bool = Field(
        default=False,
        description="Skip graph compilation: faster start, much slower decoding.",
    )
    seed: Optional[int] = Field(default=None, ge=0, description="Engine sampling seed.")
    args: dict[str, Any] = Field(
        default_factory=dict,
        description="Further vLLM engine arguments by their vLLM names (snake_case), "
        "checked against vLLM's EngineArgs when the file is loaded.",
    )

    @field_validator("kv_cache_memory")
    @classmethod
    def _kv_quantity(cls, value: Optional[str]) -> Optional[str]:
        return check_quantity(value)


class ParallelismSpec(SpecModel):
    tensor: int = Field(default=1, ge=1, le=64, description="Tensor-parallel size (accelerators per stage).")
    pipeline: int = Field(default=1, ge=1, le=64, description="Pipeline-parallel size (stages).")
    backend: Literal["auto", "mp", "ray"] = Field(
        default="auto",
        description="vLLM executor: mp (processes on one node), ray (actors, may span nodes) "
        "or auto (chosen from the placement).",
    )


# The NVIDIA types Ray detects on a node (ray.util.accelerators); Ray Serve
# LLM accepts only these names.
GpuType = Literal[
    "V100", "P100", "T4", "P4", "K80", "A10G", "L4", "L40S", "A100", "A100-40G", "A100-80G",
    "H100", "H200", "H20", "B200", "B300", "GB200", "GB300", "RTX-PRO-6000",
]


class ResourcesSpec(SpecModel):
    accelerator: Literal["cpu", "nvidia.com/gpu"] = Field(
        default="nvidia.com/gpu", description="What each vLLM worker runs on."
    )
    accelerators_per_node: int = Field(
        default=8, ge=1, le=256,
        description="Accelerators (CPU cores for cpu) one node or pod offers to workers.",
    )
    accelerator_type: Optional[GpuType] = Field(
        default=None,
        description="GPU model, as Ray names it; Ray places replicas only on nodes that have it.",
    )
    node_selector: dict[str, str] = Field(
        default_factory=dict, description="Node labels worker pods must match (cluster only)."
    )
    tolerations: list[dict[str, Any]] = Field(
        default_factory=list, description="Tolerations for worker pods (cluster only)."
    )
    cpu: Optional[str] = Field(default=None, description="CPU request per worker pod.")
    memory: Optional[str] = Field(default=None, description="Memory request per worker pod.")

    @field_validator("cpu", "memory")
    @classmethod
    def _quantities(cls, value: Optional[str]) -> Optional[str]:
        return check_quantity(value)

    @model_validator(mode="after")
    def _type_needs_gpu(self) -> ResourcesSpec:
        if self.accelerator == "cpu" and self.accelerator_type:
            raise ValueError("acceleratorType applies to GPUs only; remove it for accelerator: cpu")
        return self


class AutoscalingSpec(SpecModel):
    min_replicas: int = Field(default=1, ge=0, le=1000, description="Fewest replicas; 0 allows scale to zero.")
    max_replicas: int = Field(default=1, ge=1, le=1000, description="Most replicas.")
    target_queue_depth: float = Field(
        default=4, gt=0, le=10_000,
        description="Waiting requests per replica above which replicas are added.",
    )
    upscale_delay_seconds: float = Field(default=5, ge=0, le=3600, description="How long load must stay high before scaling up.")
    downscale_delay_seconds: float = Field(default=300, ge=0, le=86_400,
                                           description="How long load must stay low before scaling down.")

    @model_validator(mode="after")
    def _bounds(self) -> AutoscalingSpec:
        if self.max_replicas < self.min_replicas:
            raise ValueError(
                f"maxReplicas ({self.max_replicas}) must be >= minReplicas ({self.min_replicas})"
            )
        return self


class ServingSpec(SpecModel):
    max_ongoing_requests: int = Field(default=64, ge=1, le=100_000, description="Requests one replica serves at once.")
    max_queued_requests: int = Field(
        default=256, ge=0, le=1_000_000,
        description="Requests one replica holds waiting beyond the maxOngoingRequests it serves; past both, "
        "the replica answers new ones HTTP 429 at once.",
    )
    request_timeout_seconds: float = Field(default=600, gt=0, le=86_400, description="End-to-end limit for one request.")
    api_key_secret: Optional[str] = Field(
        default=None,
        description="Secret holding API keys, one key per data entry (the entry's name is a label); "
                    "when set, every route but /health needs 'Authorization: Bearer <key>'. Keys rotate without a restart.",
    )
    port: int = Field(
        default=8000, ge=1024, le=65535,
        description="HTTP port of the OpenAI endpoint. Ports KubeRay or Ray take on every pod are refused: "
        "6379, 8080, 8265, 8404, 9101, 10001-19999, 30000-31000, 40000-41000 and 52365.",
    )
    max_request_bytes: int = Field(
        default=4 * 1024 * 1024, ge=1024, le=1024**3,
        description="Largest request body accepted on /v1/*; bigger bodies get HTTP 413.",
    )
    max_tokens: Optional[int] = Field(
        default=None, ge=1, le=10_000_000,
        description="Largest max_tokens (max_completion_tokens) a request may ask for. Default: the context length.",
    )
    max_n: int = Field(default=8, ge=1, le=1024, description="Largest n (and best_of) a request may ask for.")
    max_stop_sequences: int = Field(
        default=4, ge=0, le=1024,
        description="Most stop strings in one request (vLLM's own cap, VLLM_MAX_STOP_STRINGS, is 4 by default).",
    )
    max_messages: int = Field(default=512, ge=1, le=100_000, description="Most chat messages in one request.")
    max_message_chars: int = Field(
        default=1_000_000, ge=1, le=100_000_000, description="Most characters of text in one chat message.",
    )
    max_tools: int = Field(default=128, ge=0, le=10_000, description="Most tools in one chat request (OpenAI's cap is 128).")
    max_schema_bytes: int = Field(
        default=128 * 1024, ge=1024, le=64 * 1024**2,
        description="Largest total size, as compact JSON, of what one request constrains its output with: each "
        "tool's parameters, response_format and structured_outputs. The engine compiles each into a grammar "
        "before it generates, so a larger one costs every request in the batch.",
    )
    max_schema_depth: int = Field(
        default=32, ge=2, le=1000,
        description="Deepest nesting of JSON objects and arrays in any one of those schemas; each level of "
        "nested properties adds two.",
    )


    @field_validator("port")
    @classmethod
    def _port_free_in_ray_pods(cls, value: int) -> int:
        taken = find_reserved_port(value)
        if taken is not None:
            raise ValueError(f"{value} is taken in every Ray pod: {taken.describe()}")
        return value


class IngressSpec(SpecModel):
    host: str = Field(
        pattern=r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$",
        description="Host name the Ingress serves.",
    )
    class_name: Optional[str] = Field(default=None, description="IngressClass (e.g. nginx).")
    tls_secret: Optional[str] = Field(default=None, description="TLS Secret for the host.")
    path: str = Field(default="/", pattern=r"^/", description="Path prefix routed to the endpoint.")
    annotations: dict[str, str] = Field(default_factory=dict, description="Extra Ingress annotations.")


class TracingSpec(SpecModel):
    endpoint: str = Field(
        min_length=1, max_length=2048, pattern=r"^\S+$",
        description="OTLP collector. For http/protobuf a base URL (e.g. http://otel-collector:4318; spans go "
        "to its /v1/traces, or to the URL as given when it already ends in /v1/traces); for grpc the "
        "collector's URL (e.g. http://otel-collector:4317).",
    )
    protocol: Literal["http/protobuf", "grpc"] = Field(default="http/protobuf", description="OTLP transport.")
    sample_ratio: float = Field(
        default=1.0, ge=0, le=1,
        description="Fraction of new traces recorded. A request whose W3C traceparent is marked sampled "
        "is always recorded, and one marked unsampled never is.",
    )


class TelemetrySpec(SpecModel):
    tracing: Optional[TracingSpec] = Field(
        default=None,
        description="Export OpenTelemetry traces over OTLP: a span per request in the ingress, the model "
        "replica and the engine, and one per replica start. Locally, without this section, the standard "
        "OTEL_EXPORTER_OTLP_* variables switch tracing on; otherwise tracing is off.",
    )


# Jinja templates run in every chat request; a cap keeps a spec (and the
# RayService that carries it) small.
class ModelDeploymentSpec(SpecModel):
    model: ModelSpec = Field(description="Which model to serve and where its weights come from.")
    engine: EngineSpec = Field(default_factory=EngineSpec, description="vLLM engine settings.")
    parallelism: ParallelismSpec = Field(default_factory=ParallelismSpec, description="How one replica is sharded.")
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec, description="What one replica runs on.")
    replicas: Optional[int] = Field(
        default=None, ge=0, le=1000,
        description="Fixed replica count when autoscaling is not set (the /scale subresource). Default 1. "
        "0 pauses the deployment in a cluster: its RayService and every Ray pod are deleted, the Service "
        "and Ingress stay, and a count above 0 starts it again from scratch.",
    )
    autoscaling: Optional[AutoscalingSpec] = Field(default=None, description="Queue-depth autoscaling bounds.")
    serving: ServingSpec = Field(default_factory=ServingSpec, description="Request limits and access.")
    ingress: Optional[IngressSpec] = Field(default=None, description="Expose the endpoint through an Ingress.")
    image: Optional[str] = Field(default=None, description="Runtime image for Ray pods (cluster only).")
    telemetry: Optional[TelemetrySpec] = Field(default=None, description="Traces (metrics need no settings).")
    chat: Optional[ChatSpec] = Field(
        default=None, description="OpenAI chat options of vLLM's front end: chat template, tool calling, reasoning.",
    )
    lora: Optional[LoraSpec] = Field(
        default=None, description="LoRA adapters of the model, each asked for by name as the request's model.",
    )
    tenants: Optional[TenantsSpec] = Field(
        default=None,
        description="Quotas and priority by API key: a tenant is a key's entry name in serving.apiKeySecret. "
        "Over its quota a request gets HTTP 429 with Retry-After; every answer carries x-ratelimit-* headers.",
    )

    @model_validator(mode="after")
    def _one_replica_owner(self) -> ModelDeploymentSpec:
        if self.replicas is not None and self.autoscaling is not None:
            raise ValueError(
                "set either replicas or autoscaling, not both: with autoscaling the autoscaler owns the replica count"
            )
        return self

    @model_validator(mode="after")
    def _adapters_named_apart(self) -> ModelDeploymentSpec:
        if self.lora is None:
            return self
        if ":" in self.model.id:
            raise ValueError(f"model.id {self.model.id!r} has a ':', which with lora separates the model "
                             "from an adapter (<model id>:<adapter>)")
        if self.lora.find(self.model.id) is not None:
            raise ValueError(f"an adapter in lora.adapters is named {self.model.id!r}, as model.id is")
        return self

    @property
    def effective_replicas(self) -> int:
        """Replicas to start with: fixed count, or the autoscaling floor (at least 1)."""
        if self.autoscaling is not None:
            return max(1, self.autoscaling.min_replicas)
        return 1 if self.replicas is None else self.replicas


class ObjectMeta(SpecModel):
    # Only what a ModelDeployment file needs; the cluster adds the rest.
    model_config = ConfigDict(extra="ignore", alias_generator=AliasGenerator(alias=to_camel), populate_by_name=True)
    name: str = Field(max_length=MAX_NAME_LENGTH, description="DNS-1123 label.")
    namespace: Optional[str] = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    uid: Optional[str] = None
    generation: Optional[int] = None

    @field_validator("name")
    @classmethod
    def _dns_label(cls, value: str) -> str:
        if not _DNS_LABEL.match(value):
            raise ValueError(
                f"{value!r} must be a DNS-1123 label: lowercase letters, digits and '-', starting with a letter"
            )
        return value


class ModelDeployment(SpecModel):
    api_version: Literal["shardserve.dev/v1alpha1"] = Field(description="shardserve.dev/v1alpha1")
    kind: Literal["ModelDeployment"] = Field(description="ModelDeployment")
    metadata: ObjectMeta
    spec: ModelDeploymentSpec
    # Status is written by the operator; a file may carry one (kubectl get -o yaml).
    status: Optional[dict[str, Any]] = None


# ---- status (written by the operator; its schema goes into the CRD) ----

ConditionType = Literal["SpecValid", "ResourcesApplied", "ServeReady", "Progressing", "Ready"]
_CONDITION_TYPES = get_args(ConditionType)


class Condition(SpecModel):
    # The operator writes only ConditionType's, but the CRD keeps the type an open
    # string, as metav1.Condition does: Helm never upgrades a chart's CRDs, and an
    # installed CRD enumerating the types would refuse every status write of an
    # operator that adds one.
    type: str = Field(description=f"{', '.join(_CONDITION_TYPES[:-1])} or {_CONDITION_TYPES[-1]}.")
    status: Literal["True", "False", "Unknown"]
    reason: str = Field(description="CamelCase reason.")
    message: str = ""
    observed_generation: Optional[int] = None
    last_transition_time: Optional[str] = Field(default=None, description="RFC 3339 time the status last flipped.")


class PlacementStatus(SpecModel):
    accelerators_per_replica: int
    pods_per_replica: int
    accelerators_per_pod: int
    backend: str
    strategy: str


class ModelDeploymentStatus(SpecModel):
    observed_generation: Optional[int] = None
    conditions: list[Condition] = Field(default_factory=list)
    replicas: int = Field(default=0, description="Replicas the deployment targets.")
    ready_replicas: int = Field(default=0, description="Replicas serving.")
    endpoint: Optional[str] = Field(default=None, description="OpenAI base URL inside the cluster.")
    placement: Optional[PlacementStatus] = None
    selector: Optional[str] = Field(default=None, description="Label selector of the worker pods (scale subresource).")
