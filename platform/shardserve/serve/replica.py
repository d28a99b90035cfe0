"""The model replica: Ray Serve LLM's LLMServer, which
- serves HTTP itself: the OpenAI ingress (ingress.py) runs in this process
  and calls the engine without a Ray hop,
- makes sure the weights exist on its own node first (a builtin model is
  built there, not shipped),
- reports its engine's queue (waiting, running) to the autoscaler,
- sends a stream's first output at once, batching only the rest (Ray Serve
  LLM's batcher holds the first token back for a whole interval), and
- measures its own start in phases (cold_start.py) and, with tracing on,
  wraps each engine call in a span whose child is vLLM's own (spans.py).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import os
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any, Optional, TypeVar, cast

from ray import serve
from ray.serve.handle import DeploymentHandle
from ray.serve.llm import LLMConfig
from ray.serve.llm.deployment import LLMServer
from ray.serve.llm.openai_api_models import ChatCompletionRequest, CompletionRequest

from shardserve.api.lora_spec import LoraSpec
from shardserve.api.spec import ModelSpec
from shardserve.api.tenant_spec import TenantsSpec
from shardserve.api.tracing_env import ENV_TRACES_ENDPOINT
from shardserve.builtin.tiny import ensure_builtin_model
from shardserve.builtin.tiny_adapters import ensure_builtin_adapter
from shardserve.serve.adapter_registry import publish_adapters, read_adapters
from shardserve.serve.adapters import AdapterLoader, AdapterNames, ReplicaAdapters, evict_from_vllm, load_into_vllm
from shardserve.serve.autoscaling.engine_queue import read_queue
from shardserve.serve.autoscaling.policy import RUNNING, WAITING
from shardserve.serve.http.calls import TrackedHandle
from shardserve.serve.http.endpoints import served_paths
from shardserve.serve.http.ingress import build_ingress_app
from shardserve.serve.http.limits import RequestLimits
from shardserve.serve.ray_private import (
    Batcher,
    BatchingHooks,
    RawRequestInfo,
    adopt_tokenizer_service,
    engine_client,
    engine_tasks,
    engine_vocab_size,
    serving_models,
    to_model_metadata,
)
from shardserve.serve.telemetry.cold_start import ColdStart
from shardserve.serve.telemetry.metrics import record_adapter_evicted, record_adapter_loaded, record_adapter_request
from shardserve.serve.telemetry.spans import trace_replica_call
from shardserve.serve.telemetry.tracing import tracing_enabled
from shardserve.serve.tenants.admission import TenantQuotas
from shardserve.serve.tenants.quota_actor import quota_ledger

T = TypeVar("T")
# A tenant's concurrency lease lapses after this long when no request timeout is set.
LEASE_S = 600.0

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReplicaIdentity:
    replica: str  # Serve's replica id
    application: str
    deployment: str

    @classmethod
    def from_serve(cls) -> ReplicaIdentity:
        """The Serve replica running this code."""
        ctx = serve.get_replica_context()
        return cls(ctx.replica_id.unique_id, ctx.app_name, ctx.deployment)


class ShardserveServer(BatchingHooks, LLMServer):
    # Serve awaits an async constructor, as it does LLMServer's own.
    async def __init__(  # type: ignore[misc]
        self, llm_config: LLMConfig, *, builtin_model: Optional[str] = None, limits: Optional[RequestLimits] = None,
        require_api_key: bool = False, identity: Optional[ReplicaIdentity] = None, lora: Optional[LoraSpec] = None,
        base_model: Optional[ModelSpec] = None, tenants: Optional[TenantsSpec] = None, **kwargs: Any,
    ):
        """`identity` defaults to the Serve replica's own; `lora` and the
        `base_model` it adapts come with spec.lora, `tenants` with spec.tenants."""
        self._tenants = tenants
        self._quotas: Optional[TenantQuotas] = None  # with the HTTP app, when tenants are on
        self._builtin_model = builtin_model
        self._limits, self._require_api_key = limits, require_api_key
        self._identity = identity or ReplicaIdentity.from_serve()
        self._handle: Optional[DeploymentHandle[Any]] = None  # to this deployment, made on first use
        self._served_config: Any = None  # the LLMConfig the engine runs
        self._adapters = ReplicaAdapters(AdapterNames.from_spec(llm_config.model_id, lora), self._adapter_card,
                                         peers=self._adapters_elsewhere)
        if lora is not None and base_model is not None:
            kwargs["model_downloader"] = functools.partial(
                AdapterLoader, lora=lora, model=base_model, builtin_dir=ensure_builtin_adapter,
                load_into_engine=lambda name, path: load_into_vllm(serving_models(self), engine_client(self), name, path),
                evict_from_engine=lambda name: evict_from_vllm(serving_models(self), engine_client(self), name),
                on_loaded=self._adapter_loaded, on_evicted=self._adapter_evicted)
        self._cold_start: Optional[ColdStart] = ColdStart(llm_config.model_id, self._identity.application,
                                                          self._identity.deployment, self._identity.replica)
        if tracing_enabled() and os.environ.get(ENV_TRACES_ENDPOINT):
            # vLLM's span per request (tokens, time to first token, queue).
            llm_config.update_engine_kwargs(otlp_traces_endpoint=os.environ[ENV_TRACES_ENDPOINT])
        try:
            with self._cold_start.active():
                await super().__init__(llm_config, **kwargs)
        except BaseException as exc:
            self._cold_start.failed(exc)
            raise
        self._cold_start.engine_started(llm_config)

    async def __serve_build_asgi_app__(self) -> Any:
        """The HTTP app Serve runs in this replica (after the engine started)."""
        llm_config = await self.llm_config()
        assert llm_config is not None  # set in the constructor
        self._served_config = llm_config
        model_id = llm_config.model_id
        tasks = await engine_tasks(self)
        # /v1/models says what the model does and which routes serve it.
        card = to_model_metadata(model_id, llm_config, {"tasks": list(tasks), "endpoints": served_paths(tasks)})
        limits = dataclasses.replace(self._limits or RequestLimits(), vocab_size=engine_vocab_size(self))
        has_adapters = bool(self._adapters.names.listed or self._adapters.names.dynamic)
        app = self._identity.application
        self._quotas = None if self._tenants is None else TenantQuotas(
            self._tenants, ledger=lambda: quota_ledger(app), lease_s=limits.request_timeout_seconds or LEASE_S,
            max_tokens_cap=limits.max_tokens, application=app)
        return build_ingress_app(self, model_id, card, limits, self._require_api_key,
                                 app, model_tasks=tasks,
                                 adapters=self._adapters if has_adapters else None,
                                 elsewhere=self._elsewhere if has_adapters else None, tenant_quotas=self._quotas)

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Serve's user_config (api.serve_options.build_user_config), at start
        and whenever it changes: tenants' limits change on running replicas."""
        tenants = user_config.get("tenants")
        if tenants is None:
            return
        self._tenants = TenantsSpec.model_validate(tenants)
        if self._quotas is not None:
            self._quotas.tenants = self._tenants
        logger.info("tenants' limits now: %s", tenants)

    def _adapter_card(self, name: str) -> Any:
        """An adapter's /v1/models card: the model's, under the adapter's id, naming its parent."""
        assert self._served_config is not None  # cards are asked for by the HTTP app, built after the engine
        return to_model_metadata(name, self._served_config, {"parent": self._served_config.model_id})

    def _adapter_loaded(self, name: str, seconds: float) -> None:
        self._adapters.resident[name] = seconds
        record_adapter_loaded(self._identity.application, name, seconds)
        self._publish_adapters()

    def _adapter_evicted(self, name: str) -> None:
        self._adapters.resident.pop(name, None)
        record_adapter_evicted(self._identity.application, name)
        self._publish_adapters()

    def _publish_adapters(self) -> None:
        ident = self._identity
        try:
            publish_adapters(ident.application, ident.deployment, ident.replica, self._adapters.resident)
        except Exception as err:  # noqa: BLE001 - routing then only loses adapter affinity
            logger.warning("publishing this replica's adapters failed: %r", err)

    def _adapters_elsewhere(self) -> dict[str, list[str]]:
        ident = self._identity
        return read_adapters(ident.application, ident.deployment, skip_replica=ident.replica)

    def _elsewhere(self, adapter: str) -> Any:
        """A handle to this deployment's replicas for `adapter`: Serve's router
        prefers one that holds it (multiplexing)."""
        if self._handle is None:
            self._handle = serve.get_deployment_handle(self._identity.deployment, self._identity.application)
        return TrackedHandle(self._handle.options(stream=True, multiplexed_model_id=adapter))

    async def start(self) -> None:
        builtin_model: Optional[str] = getattr(self, "_builtin_model", None)
        if builtin_model:
            path = await asyncio.to_thread(ensure_builtin_model, builtin_model)
            logger.info("builtin model %s ready at %s", builtin_model, path)
        await super().start()  # type: ignore[no-untyped-call]  # unannotated in Ray; a super() call escapes the exclusion
        adopt_tokenizer_service(self)

    async def check_health(self) -> None:
        await super().check_health()
        # Serve checks a replica as soon as it marks it running: the start is over.
        cold_start, self._cold_start = getattr(self, "_cold_start", None), None
        if cold_start is not None:
            cold_start.ready()

    # Typed with ray.serve.llm's public request classes: empty subclasses of
    # the internal ones the routes parse bodies into (tests/test_ray_api.py).
    async def chat(  # type: ignore[override]
        self, request: ChatCompletionRequest, raw_request_info: Optional[RawRequestInfo] = None,
    ) -> AsyncGenerator[Any, None]:
        return await trace_replica_call("chat", request, raw_request_info, super().chat, self._identity.replica,
                                        self._request_adapter())

    async def completions(  # type: ignore[override]
        self, request: CompletionRequest, raw_request_info: Optional[RawRequestInfo] = None,
    ) -> AsyncGenerator[Any, None]:
        return await trace_replica_call("completions", request, raw_request_info, super().completions,
                                        self._identity.replica, self._request_adapter())

    def _request_adapter(self) -> Optional[str]:
        """The adapter the current request runs with (Serve's multiplexed model id), counted per adapter."""
        adapter = serve.get_multiplexed_model_id() or None
        if adapter is not None:
            record_adapter_request(self._identity.application, adapter)
        return adapter

    async def record_autoscaling_stats(self) -> dict[str, float]:
        """The engine's queue, pushed by Serve to the autoscaling policy."""
        queue = read_queue()
        return {WAITING: float(queue.waiting), RUNNING: float(queue.running)}

    def batch_output_stream(self, generator: AsyncGenerator[T, None]) -> AsyncGenerator[list[T], None]:
        return first_then_batched(generator, self.batch_interval_ms())


async def first_then_batched(generator: AsyncGenerator[T, None], interval_ms: Optional[float]) -> AsyncGenerator[list[T], None]:
    """Yields [first output] immediately, then batches of the rest every interval."""
    try:
        first = await generator.__anext__()
    except StopAsyncIteration:
        return
    yield [first]
    async for batch in Batcher(generator, interval_ms=interval_ms).stream():
        # Ray types a batch as an iterable; its batcher yields the list it drained.
        yield cast(list[T], batch)
