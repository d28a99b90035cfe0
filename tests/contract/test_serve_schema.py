"""Judge: Ray Serve reading our serveConfigV2 and building its application.

KubeRay YAML-decodes spec.serveConfigV2, JSON-encodes it and PUTs it to the
dashboard (updateServeDeployment, ray-operator/controllers/ray/
rayservice_controller.go:1208-1252, v1.5.1). The dashboard validates it with
`ServeDeploySchema.model_validate` (ray/dashboard/modules/serve/serve_head.py
put_all_applications) and answers 400 when that fails. Serve's controller
then imports each application's import_path and calls it with its args
(`call_user_app_builder_with_args_if_necessary`, in build_serve_application,
ray/serve/_private/application_state.py).
"""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError
from ray._common.utils import import_attr
from ray.serve._private.api import call_user_app_builder_with_args_if_necessary
from ray.serve.schema import ServeDeploySchema

from shardserve.api.validation import SpecError
from shardserve.api.yaml_loading import safe_load
from shardserve.serve.app import build_app
from tests.contract.specs import SPEC_IDS, SPECS, rendered_rayservice


def serve_config_as_kuberay_sends_it(spec_id: str) -> dict:
    """YAML -> JSON, as KubeRay turns serveConfigV2 into the request body."""
    return json.loads(json.dumps(safe_load(rendered_rayservice(spec_id)["spec"]["serveConfigV2"])))


@pytest.mark.parametrize("spec_id", SPEC_IDS)
def test_serve_config_validates_against_serve_deploy_schema(spec_id):
    """The dashboard's check of the request body; the import path resolves to our builder."""
    config = ServeDeploySchema.model_validate(serve_config_as_kuberay_sends_it(spec_id))
    (app,) = config.applications
    assert import_attr(app.import_path) is build_app
    assert config.http_options.port == SPECS[spec_id].spec.serving.port


# ---------------------------------------------------------------- the judge can say no

def test_sanity_serve_deploy_schema_rejects_a_bad_config():
    """Known bad: two applications on the same route prefix, a port that is not a number."""
    good = serve_config_as_kuberay_sends_it("example-llama-8b-1gpu")
    ServeDeploySchema.model_validate(good)
    twice = {**good, "applications": good["applications"] + [{**good["applications"][0], "name": "other"}]}
    with pytest.raises(ValidationError, match="route_prefix"):
        ServeDeploySchema.model_validate(twice)
    with pytest.raises(ValidationError):
        ServeDeploySchema.model_validate({**good, "http_options": {**good["http_options"], "port": "http"}})


def test_sanity_builder_rejects_args_the_spec_refuses():
    """Known bad: args with tensor 8 on 4-GPU nodes fail in our builder, before Ray is needed."""
    (app,) = serve_config_as_kuberay_sends_it("example-llama-70b-tp4-pp2")["applications"]
    args = json.loads(json.dumps(app["args"]))
    args["spec"]["parallelism"]["tensor"] = 8
    args["spec"]["resources"]["acceleratorsPerNode"] = 4
    with pytest.raises(SpecError, match="spec.parallelism.tensor"):
        call_user_app_builder_with_args_if_necessary(import_attr(app["import_path"]), args)
