"""The Ray Serve LLM classes shardserve builds on: the public ones stand in
for the internal ones Ray's own code was written against."""

import pytest
from ray.llm._internal.serve.core.configs import openai_api_models as internal_models
from ray.llm._internal.serve.core.ingress.ingress import OpenAiIngress as InternalOpenAiIngress
from ray.llm._internal.serve.core.server.llm_server import LLMServer as InternalLLMServer
from ray.serve.llm import deployment, ingress, openai_api_models

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
