"""Every use of Ray's private API, in one place.

Written against ray==2.60.0, the release pyproject.toml pins. Ray changes
private names without notice, so moving the pin means checking each entry
below against the new release; tests/test_ray_api.py checks that each still
exists. No other module imports a private Ray path or reaches into a Ray
object's private attributes (tests/test_import_rules.py).

Where ray.serve.llm has a public class, the code uses that instead
(LLMServer, OpenAiIngress, the OpenAI request models). What is here has no
public equivalent in 2.60, and is needed because:

Ray Serve LLM (ray.llm._internal):
- `CallbackBase`: the base class of an LLMConfig callback; the cold-start
  callback marks the end of the model download with it.
- `Batcher` and `BatchingHooks`: LLMServer batches a stream's outputs in its
  private `_batch_output_stream`, at `_get_batch_interval_ms`; the replica
  overrides the hook to send the first output alone, then batches the rest
  with Ray's own batcher.
- `RawRequestInfo`: the HTTP request as LLMServer hands it to the engine;
  the replica's span replaces the request's trace context in it.
- `to_model_metadata`: the model card /v1/models serves, built as Ray's own
  builder builds it.
- `OpenAIHTTPException`: what LLMServer and OpenAiIngress raise for a
  failed request; the ingress answers it in OpenAI's error shape.
- `engine_tasks`, `engine_vocab_size`: what the replica's model can do
  (generate, embed, ...) and how many token ids it has, from vLLM's engine
  client, which LLMServer's engine keeps in a private attribute; the ingress
  serves the routes those tasks need (endpoints.py) and bounds token ids.
- `adopt_tokenizer_service`: Ray 2.60's vLLM engine looks for vLLM's
  tokenizer service under an older name (`openai_serving_tokenization`);
  vLLM 0.29 sets `serving_tokenization`, so /tokenize and /detokenize would
  say the model cannot tokenize. The replica hands the engine the service
  under the name it reads.
- `SetRequestIdMiddleware`: gives each request its id (x-request-id), as
  Ray's own ingress app does; LLMServer hands the id to vLLM.
- `LoraModelLoader`, `LoraMirrorConfig`, `DiskMultiplexConfig`: Ray Serve
  LLM's LoRA loading. LLMServer takes a loader class (`model_downloader`)
  and calls it, inside Serve's multiplexing, for each adapter a request
  names; shardserve's loader resolves the sources Ray's does not read
  (hf, pvc, file, builtin) and hands s3/gs ones to Ray's downloader.
- `serving_models`, `engine_client`: vLLM's adapter registry and engine
  client, which Ray's vLLM engine keeps in private attributes; the loader
  loads an adapter into vLLM through them and frees it on eviction.
- `ModelLookupHooks`: OpenAiIngress finds a request's model in its private
  `_get_model_id` and its handle in `_get_configured_serve_handle`, and
  knows adapters only in Ray's `<model id>:<suffix>` form from cloud
  storage; the replica's ingress overrides both under public names to
  accept an adapter's own name and route it.
- `multiplexed_model` (ray.serve.context's request context): the model
  replica's in-process calls carry the adapter a request names where a
  DeploymentHandle would, so LLMServer resolves it as it would from Serve.

Ray Serve and Ray core:
- `tracing_enabled` (ray.serve._private.tracing_utils): whether Serve set up
  tracing in this process; shardserve's spans join Serve's.
- `kv_get`/`kv_put`/`kv_keys` (ray.experimental.internal_kv): the cluster's
  key-value store; replicas and the autoscaling policy publish there what
  `shardserve status` shows, and replicas see there which adapters the
  others hold.
- `serve_details` (ray.serve.context._get_global_client): the controller's
  view of each application; `shardserve status` needs each replica's state
  and the target replica count, which `serve.status()` does not give.
- `apply_serve_config` (the Serve client's deploy_apps): deploys a Serve
  config file's applications, as the dashboard's REST API does for KubeRay,
  without waiting; Serve's public API for that is the REST API, which the
  local Ray runs without (no dashboard).
- `init_ray` (ray.init's _metrics_export_port): the port of Ray's metrics
  agent, where `shardserve run` serves /metrics.

The names that load vLLM or torch (`to_model_metadata`, `OpenAIHTTPException`,
`SetRequestIdMiddleware` and the three LoRA ones) load on first use: the Serve
controller (the autoscaling policy), Serve's proxies (tracing) and
`shardserve status` import this module and must not pay for vLLM.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import AsyncGenerator, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Optional, TypeVar

import ray
from ray.experimental.internal_kv import _internal_kv_get, _internal_kv_list, _internal_kv_put
from ray.llm._internal.common.callbacks.base import CallbackBase as CallbackBase
from ray.llm._internal.serve.core.protocol import RawRequestInfo as RawRequestInfo
from ray.llm._internal.serve.utils.batcher import Batcher as Batcher
from ray.serve._private.tracing_utils import is_tracing_enabled
from ray.serve.context import _get_global_client, _get_serve_request_context, _serve_request_context
from ray.serve.schema import ServeDeploySchema

if TYPE_CHECKING:
    from ray.llm._internal.common.utils.cloud_utils import LoraMirrorConfig as LoraMirrorConfig
    from ray.llm._internal.serve.core.configs.llm_config import DiskMultiplexConfig as DiskMultiplexConfig
    from ray.llm._internal.serve.core.configs.openai_api_models import OpenAIHTTPException as OpenAIHTTPException
    from ray.llm._internal.serve.core.configs.openai_api_models import to_model_metadata as to_model_metadata
    from ray.llm._internal.serve.core.ingress.middleware import SetRequestIdMiddleware as SetRequestIdMiddleware
    from ray.llm._internal.serve.utils.lora_serve_utils import LoraModelLoader as LoraModelLoader
    from ray.serve.llm.deployment import LLMServer
    from ray.serve.llm.ingress import OpenAiIngress

    _HooksBase = LLMServer
    _IngressBase = OpenAiIngress
else:
    _HooksBase = object
    _IngressBase = object

T = TypeVar("T")

# name -> module, for the names that load vLLM or torch (see the docstring).
LOADED_ON_FIRST_USE = {
    "OpenAIHTTPException": "ray.llm._internal.serve.core.configs.openai_api_models",
    "to_model_metadata": "ray.llm._internal.serve.core.configs.openai_api_models",
    "SetRequestIdMiddleware": "ray.llm._internal.serve.core.ingress.middleware",
    "LoraModelLoader": "ray.llm._internal.serve.utils.lora_serve_utils",
    "LoraMirrorConfig": "ray.llm._internal.common.utils.cloud_utils",
    "DiskMultiplexConfig": "ray.llm._internal.serve.core.configs.llm_config",
}


def __getattr__(name: str) -> Any:
    module = LOADED_ON_FIRST_USE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


class BatchingHooks(_HooksBase):
    """LLMServer's private batching hook and interval, under public names.

    Mixed in before LLMServer: `class Replica(BatchingHooks, LLMServer)`.
    """

    def batch_output_stream(self, generator: AsyncGenerator[T, None]) -> AsyncGenerator[list[T], None]:
        """How a streamed answer's outputs are batched; LLMServer's own way unless overridden."""
        return super()._batch_output_stream(generator)

    def batch_interval_ms(self) -> Optional[float]:
        """How often a stream's batch is sent (the LLMConfig's stream batching interval)."""
        return super()._get_batch_interval_ms()

    def _batch_output_stream(self, generator: AsyncGenerator[T, None]) -> AsyncGenerator[list[T], None]:
        return self.batch_output_stream(generator)


class ModelLookupHooks(_IngressBase):
    """OpenAiIngress's private model lookup under public names.

    Mixed in before OpenAiIngress: `class Ingress(ModelLookupHooks, OpenAiIngress)`.
    """

    async def model_for(self, model: Optional[str]) -> str:
        """The model a request's `model` field names (404 when none)."""
        model_id: str = await super()._get_model_id(model)
        return model_id

    def handle_for(self, model_id: str) -> Any:
        """The handle that serves `model_id`'s requests."""
        return super()._get_configured_serve_handle(model_id)

    async def _get_model_id(self, model: Optional[str]) -> str:
        return await self.model_for(model)

    def _get_configured_serve_handle(self, model_id: str) -> Any:
        return self.handle_for(model_id)


async def engine_tasks(server: LLMServer) -> tuple[str, ...]:
    """The vLLM tasks of a started replica's model; ("generate",) from an
    engine that cannot say, as Ray's own app builder assumes."""
    client = getattr(server.engine, "_engine_client", None)
    if client is None or not hasattr(client, "get_supported_tasks"):
        return ("generate",)
    return tuple(await client.get_supported_tasks())


def engine_vocab_size(server: LLMServer) -> Optional[int]:
    """The number of token ids of a started replica's model, when its engine says."""
    model_config = getattr(getattr(server.engine, "_engine_client", None), "model_config", None)
    return int(model_config.get_vocab_size()) if model_config is not None else None


def adopt_tokenizer_service(server: LLMServer) -> None:
    """After the engine started: its tokenizer service where Ray's engine reads it."""
    engine, state = server.engine, getattr(server.engine, "_app_state", None)
    if state is not None and getattr(engine, "_oai_serving_tokenization", None) is None:
        engine._oai_serving_tokenization = getattr(state, "serving_tokenization", None)  # type: ignore[union-attr]


def serving_models(server: LLMServer) -> Any:
    """vLLM's registry of the adapters a started replica's engine serves (OpenAIServingModels)."""
    return getattr(server.engine, "_oai_models", None)


def engine_client(server: LLMServer) -> Any:
    """vLLM's engine client of a started replica (AsyncLLM)."""
    return getattr(server.engine, "_engine_client", None)


@contextmanager
def multiplexed_model(model_id: str) -> Iterator[None]:
    """Inside the block, Serve's request context names `model_id` as the
    request's multiplexed model, as a DeploymentHandle call would."""
    current = _get_serve_request_context()
    token = _serve_request_context.set(dataclasses.replace(current, multiplexed_model_id=model_id))  # type: ignore[arg-type]  # Ray types the variable by its default, None
    try:
        yield
    finally:
        _serve_request_context.reset(token)


def tracing_enabled() -> bool:
    return bool(is_tracing_enabled())


def kv_get(key: str, namespace: str) -> Optional[bytes]:
    value = _internal_kv_get(key, namespace=namespace)
    return value if isinstance(value, bytes) else None


def kv_put(key: str, value: str, namespace: str) -> None:
    _internal_kv_put(key, value, namespace=namespace)


def kv_keys(prefix: str, namespace: str) -> list[str]:
    return [k.decode() if isinstance(k, bytes) else str(k) for k in _internal_kv_list(prefix, namespace=namespace)]


def serve_details() -> dict[str, Any]:
    """Serve's applications, deployments and replicas, as its controller sees them."""
    client = _get_global_client()  # raises when no Serve controller runs
    if client is None:
        raise RuntimeError("no Serve controller is running")
    details: dict[str, Any] = client.get_serve_details()
    return details


def apply_serve_config(applications: list[dict[str, Any]]) -> None:
    """Deploys a Serve config's applications as KubeRay does through the
    dashboard, and returns at once; `serve.status()` tells when they run."""
    client = _get_global_client()  # raises when no Serve controller runs
    if client is None:
        raise RuntimeError("no Serve controller is running")
    client.deploy_apps(ServeDeploySchema.model_validate({"applications": applications}))


def init_ray(*, metrics_export_port: Optional[int], **options: Any) -> None:
    """`ray.init(**options)`, with Ray's metrics agent on `metrics_export_port` (None: Ray picks)."""
    ray.init(**options, _metrics_export_port=metrics_export_port)
