"""The Serve application for a ModelDeployment.

`build_app` is the import path both `shardserve run` and the cluster's
RayService (`serveConfigV2`) use, with the ModelDeployment document as args.
"""

from __future__ import annotations

from typing import Any, Optional

from ray import serve
from ray.serve.deployment import Application
from ray.serve.llm import LLMConfig, build_llm_deployment

from shardserve.builder import INGRESS_DEPLOYMENT, LLM_DEPLOYMENT, build_llm_config
from shardserve.spec import ModelDeployment
from shardserve.validation import parse_deployment


def build_llm_config_for(md: ModelDeployment) -> dict[str, Any]:
    """The LLMConfig dict, with a builtin model's directory on this machine."""
    model = md.spec.model
    builtin_dir = None
    if model.scheme == "builtin":
        from shardserve.models import builtin_model_dir

        builtin_dir = str(builtin_model_dir(model.location))
    return build_llm_config(md, builtin_dir=builtin_dir)


def build_application(md: ModelDeployment, llm_config_dict: Optional[dict[str, Any]] = None) -> Application:
    """The Serve application; `llm_config_dict` replaces the built config (benchmarks compare variants)."""
    model = md.spec.model
    builtin = model.location if model.scheme == "builtin" else None
    llm_config = LLMConfig(**(llm_config_dict or build_llm_config_for(md)))

    # Imported here: the ingress module pulls in FastAPI and Serve LLM's routes.
    from ray.llm._internal.serve.core.configs.openai_api_models import to_model_metadata
    from shardserve.ingress import ShardserveIngress, make_ingress_class
    from shardserve.request_checks import RequestLimits

    server = build_llm_deployment(
        llm_config,
        bind_kwargs={"builtin_model": builtin} if builtin else None,
        override_serve_options={"name": LLM_DEPLOYMENT},
    )
    options = ShardserveIngress.get_deployment_options([llm_config])
    serving = md.spec.serving
    ingress_cls = make_ingress_class(RequestLimits.from_serving(serving), require_api_key=bool(serving.api_key_secret))
    return serve.deployment(ingress_cls, name=INGRESS_DEPLOYMENT, **options).bind(
        llm_deployments={llm_config.model_id: server},
        model_cards={llm_config.model_id: to_model_metadata(llm_config.model_id, llm_config)},
    )


def build_app(args: dict[str, Any]) -> Application:
    """Ray Serve application builder: args is a ModelDeployment document."""
    return build_application(parse_deployment(args, source="application args"))
