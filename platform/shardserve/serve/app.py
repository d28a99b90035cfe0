"""The Serve application for a ModelDeployment.

`build_app` is the import path both `shardserve run` and the cluster's
RayService (`serveConfigV2`) use, with the ModelDeployment document as args.
"""

from __future__ import annotations

from typing import Any, Optional

from ray import serve
from ray.serve.deployment import Application
from ray.serve.llm import LLMConfig, build_llm_deployment

from shardserve.api.contract import LLM_DEPLOYMENT
from shardserve.api.spec import ModelDeployment
from shardserve.api.validation import parse_deployment
from shardserve.builtin.tiny import builtin_model_dir
from shardserve.serve.http.limits import RequestLimits
from shardserve.serve.llm_config import build_llm_config
from shardserve.serve.replica import ShardserveServer


def build_llm_config_for(md: ModelDeployment) -> dict[str, Any]:
    """The LLMConfig dict, with a builtin model's directory on this machine."""
    model = md.spec.model
    builtin_dir = None
    if model.scheme == "builtin":
        builtin_dir = str(builtin_model_dir(model.location))
    return build_llm_config(md, builtin_dir=builtin_dir)


def build_application(md: ModelDeployment, llm_config_dict: Optional[dict[str, Any]] = None) -> Application:
    """The Serve application; `llm_config_dict` replaces the built config (benchmarks compare variants).

    One deployment: the model replicas serve HTTP themselves (ShardserveServer
    is Serve's ingress). Behind HAProxy (`RAY_SERVE_ENABLE_HA_PROXY=1`, the
    default of `shardserve run` and of the rendered RayService) each request
    goes straight to the replica with the fewest open connections; behind
    Serve's own proxy it takes one Ray hop.
    """
    model = md.spec.model
    serving = md.spec.serving
    llm_config = LLMConfig(**(llm_config_dict or build_llm_config_for(md)))
    bind_kwargs: dict[str, Any] = {
        "limits": RequestLimits.from_spec(serving, md.spec.chat),
        "require_api_key": bool(serving.api_key_secret),
    }
    if model.scheme == "builtin":
        bind_kwargs["builtin_model"] = model.location
    if md.spec.lora is not None:
        bind_kwargs.update(lora=md.spec.lora, base_model=model)
    if md.spec.tenants is not None:
        bind_kwargs["tenants"] = md.spec.tenants
    return build_llm_deployment(
        llm_config,
        bind_kwargs=bind_kwargs,
        override_serve_options={"name": LLM_DEPLOYMENT},
        # The one place the replica class is named (Ray's builder prefers it to
        # LLMConfig.server_cls). Late-bound ingress: Serve asks the replica for
        # its HTTP app once the engine runs.
        deployment_cls=serve.ingress()(ShardserveServer),
    )


def build_app(args: dict[str, Any]) -> Application:
    """Ray Serve application builder: args is a ModelDeployment document."""
    return build_application(parse_deployment(args, source="application args"))
