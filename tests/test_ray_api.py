"""The Ray API shardserve builds on: the public Ray Serve LLM classes stand
in for the internal ones Ray's own code was written against, and each
private name `shardserve.serve.ray_private` uses exists in the pinned Ray."""

import dataclasses
import gc
import importlib
import inspect
import subprocess
import sys

import pytest
from ray.llm._internal.serve.core.configs import openai_api_models as internal_models
from ray.llm._internal.serve.core.ingress.ingress import OpenAiIngress as InternalOpenAiIngress
from ray.llm._internal.serve.core.server.llm_server import LLMServer as InternalLLMServer
from ray.serve.llm import LLMConfig, deployment, ingress, openai_api_models

from shardserve.serve import ray_private
from shardserve.serve.http.ingress import ShardserveIngress
from shardserve.serve.replica import ShardserveServer


@pytest.mark.parametrize("public, internal", [
    (deployment.LLMServer, InternalLLMServer),
    (ingress.OpenAiIngress, InternalOpenAiIngress),
    (openai_api_models.ChatCompletionRequest, internal_models.ChatCompletionRequest),
    (openai_api_models.CompletionRequest, internal_models.CompletionRequest),
])
def test_each_public_class_is_an_empty_subclass_of_the_internal_one(public, internal):
    """Not the same object: a subclass adding no field and no method. A request
    parsed into the public class passes Ray's isinstance checks on the internal
    one, and validates the same."""
    assert public is not internal and public.__bases__ == (internal,)
    # Ray's @PublicAPI and pydantic add bookkeeping attributes; neither adds code.
    functions = [name for name, value in vars(public).items()
                 if callable(value) and not name.startswith("__")
                 and name != "model_post_init"]  # pydantic's, set on each subclass of a model with private attributes
    assert functions == []
    if hasattr(internal, "model_fields"):
        assert public.model_fields.keys() == internal.model_fields.keys()


def test_the_replica_and_the_ingress_derive_from_the_public_classes():
    assert issubclass(ShardserveServer, deployment.LLMServer)
    assert issubclass(ShardserveIngress, ingress.OpenAiIngress)


@pytest.mark.parametrize("name", sorted(ray_private.LOADED_ON_FIRST_USE))
def test_each_name_loaded_on_first_use_exists_in_the_pinned_ray(name):
    module = importlib.import_module(ray_private.LOADED_ON_FIRST_USE[name])
    assert getattr(ray_private, name) is getattr(module, name)


def test_the_modules_outside_the_replica_load_no_vllm():
    """The Serve controller (the policy), every Serve process (tracing) and
    `shardserve status` import ray_private; vLLM stays out of them."""
    modules = ["shardserve.serve.ray_private", "shardserve.autoscaling", "shardserve.tracing",
               "shardserve.serve.telemetry.cold_start", "shardserve.local.status"]
    code = (f"import importlib, sys; [importlib.import_module(n) for n in {modules!r}]; "
            "print(sorted({'vllm', 'torch'} & {m.split('.')[0] for m in sys.modules}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert out.stdout.strip() == "[]"


class Engine:
    """Stands in for vLLM's engine: a streamed chat of five chunks."""

    async def chat(self, request, raw_request_info=None):
        for i in range(5):
            yield f"data: {i}\n\n"


class Replica(ray_private.BatchingHooks, deployment.LLMServer):
    batched_here = False

    def batch_output_stream(self, generator):
        self.batched_here = True
        return super().batch_output_stream(generator)  # Ray's own batching


@pytest.mark.asyncio
@pytest.mark.filterwarnings("ignore:coroutine 'LLMServer.__del__' was never awaited")  # Ray's async __del__
async def test_llm_server_batches_a_stream_through_the_hook():
    config = LLMConfig(model_loading_config={"model_id": "m", "model_source": "/m"},
                       experimental_configs={"stream_batching_interval_ms": 20})
    server = Replica.sync_init(config, engine_cls=Engine)
    server.engine = Engine()  # what start() would build, without starting anything
    request = openai_api_models.ChatCompletionRequest(model="m", messages=[{"role": "user", "content": "hi"}],
                                                      stream=True)
    stream = await server.chat(request)
    chunks = [chunk async for batch in stream for chunk in batch]
    assert server.batched_here and chunks == [f"data: {i}\n\n" for i in range(5)]
    assert server.batch_interval_ms() == 20
    del server
    gc.collect()  # here, under this test's warning filter


def test_the_replica_overrides_the_batching_hook():
    assert ShardserveServer._batch_output_stream is ray_private.BatchingHooks._batch_output_stream
    assert "batch_output_stream" in vars(ShardserveServer)


class _RouteRecorder:
    """Takes the place of a FastAPI app for Ray's route factories."""

    def __init__(self):
        self.routes = []

    def __getattr__(self, method):
        return lambda path, **_options: self.routes.append((method, path))


def test_the_ingress_routes_every_post_route_of_rays_ingress():
    """Ray's OpenAiIngress routes: a POST route Ray adds in an upgrade must
    be added to the endpoint table (with the tasks it needs), not go unserved."""
    from ray.llm._internal.serve.core.ingress.ingress import DEFAULT_ENDPOINTS

    from shardserve.serve.http.endpoints import ENDPOINTS

    posts = {}
    for name, route in DEFAULT_ENDPOINTS.items():
        recorder = _RouteRecorder()
        route(recorder)
        (method, path), = recorder.routes
        if method == "post":
            posts[name] = path
    assert posts == {endpoint.name: endpoint.path for endpoint in ENDPOINTS}


def test_the_private_names_the_lora_path_relies_on_exist():
    """Ray's ingress looks models up through the two methods ModelLookupHooks
    overrides; LLMServer takes a loader class and resolves an adapter from
    Serve's request context; Ray's vLLM engine keeps vLLM's adapter registry
    and engine client under the names ray_private reads."""
    from ray.llm._internal.serve.engines.vllm import vllm_engine
    from ray.serve import context

    for name in ("_get_model_id", "_get_configured_serve_handle"):
        assert callable(getattr(InternalOpenAiIngress, name))
        assert name in vars(ray_private.ModelLookupHooks)
    assert "model_downloader" in inspect.signature(InternalLLMServer.__init__).parameters
    assert "serve.get_multiplexed_model_id()" in inspect.getsource(InternalLLMServer._maybe_resolve_lora_from_multiplex)
    engine_source = inspect.getsource(vllm_engine.VLLMEngine)
    assert "self._oai_models =" in engine_source and "self._engine_client =" in engine_source
    assert "multiplexed_model_id" in {f.name for f in dataclasses.fields(context._RequestContext)}


def test_the_declarative_deploy_and_reconfigure_shardserve_run_relies_on():
    """`shardserve run` deploys a Serve config through the Serve client's
    deploy_apps, the controller's apply_config that the dashboard's REST
    API calls for KubeRay; Serve calls a replica's `reconfigure` with the
    deployment's user_config, which the replica class defines."""
    from ray.serve._private.client import ServeControllerClient
    from ray.serve._private.controller import ServeController

    assert "config" in inspect.signature(ServeControllerClient.deploy_apps).parameters
    assert "self._controller.apply_config.remote(config)" in inspect.getsource(ServeControllerClient.deploy_apps)
    assert "config" in inspect.signature(ServeController.apply_config).parameters
    assert list(inspect.signature(ShardserveServer.reconfigure).parameters) == ["self", "user_config"]
