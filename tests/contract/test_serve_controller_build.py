"""Judge: Serve's controller building our application from serveConfigV2, with a real Ray and no GPU.

The steps are Serve's own, in the order its controller runs them for a
declarative deploy (ray/serve/_private/application_state.py, Ray 2.60):
the build task (`build_serve_application`, :1686) imports our import path
and calls it with the args, then the controller turns its output into
deployment infos (`deploy_args_to_deployment_info`, :963-968) and applies
the config's per-deployment options (`override_deployment_info`, :1001).
The build task's function runs in this process rather than as a task, so
vLLM and torch are imported once for every spec. No replica starts.
"""

from __future__ import annotations

import pytest
import ray
from ray.serve._private.application_state import build_serve_application, override_deployment_info
from ray.serve._private.deploy_utils import deploy_args_to_deployment_info, get_app_code_version
from ray.serve.schema import LoggingConfig, ServeDeploySchema

from shardserve.api.contract import LLM_DEPLOYMENT
from tests.contract.specs import GPU_SPEC_IDS, SPECS, placement
from tests.contract.test_serve_schema import serve_config_as_kuberay_sends_it

pytestmark = pytest.mark.integration


def _build_sample() -> list[str]:
    """Every GPU example and case, and the first generated spec of each GPU type, one pod or several."""
    chosen = [s for s in GPU_SPEC_IDS if not s.startswith("gen-")]
    seen = set()
    for spec_id in GPU_SPEC_IDS:
        spec = SPECS[spec_id].spec
        key = (spec.resources.accelerator_type, placement(spec_id).pods_per_replica > 1)
        if spec_id.startswith("gen-") and key not in seen:
            seen.add(key)
            chosen.append(spec_id)
    return chosen


@pytest.fixture(autouse=True, scope="module")
def no_ray_autostart():
    """This module needs a connected Ray (the build reads its runtime context): one local instance, no GPU."""
    ray.init(num_cpus=2, num_gpus=0, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _controller_builds(config: ServeDeploySchema) -> dict:
    (app,) = config.applications
    policies = {d.name: d.autoscaling_config["policy"]["policy_function"]
                for d in app.deployments if isinstance(d.autoscaling_config, dict)}
    _, deploy_args, error = build_serve_application._function(
        app.import_path, get_app_code_version(app), app.name, app.args, LoggingConfig(), None, policies, {}, {})
    assert error is None, error
    infos = {args["deployment_name"]: deploy_args_to_deployment_info(**args, app_name=app.name)
             for args in deploy_args}
    serialized_policies = {args["deployment_name"]: args["serialized_autoscaling_policy_def"]
                           for args in deploy_args if args["serialized_autoscaling_policy_def"] is not None}
    return override_deployment_info(infos, app, serialized_policies, {}, {})


@pytest.mark.parametrize("spec_id", _build_sample())
def test_serves_controller_builds_the_gpu_application_with_the_specs_replicas(spec_id):
    md = SPECS[spec_id]
    config = ServeDeploySchema.model_validate(serve_config_as_kuberay_sends_it(spec_id))
    infos = _controller_builds(config)
    assert list(infos) == [LLM_DEPLOYMENT]
    deployment = infos[LLM_DEPLOYMENT].deployment_config
    scaling = md.spec.autoscaling
    if scaling is None:
        assert deployment.num_replicas == md.spec.effective_replicas
        assert deployment.autoscaling_config is None
    else:
        auto = deployment.autoscaling_config
        assert (auto.min_replicas, auto.max_replicas) == (scaling.min_replicas, scaling.max_replicas)
        assert auto.policy.policy_function == "shardserve.autoscaling:QueueDepthPolicy"
    # What Ray Serve LLM asked for: one GPU bundle per worker, the replica actor's CPU in the first.
    replica = infos[LLM_DEPLOYMENT].replica_config
    bundles = replica.placement_group_bundles
    assert len(bundles) == placement(spec_id).accelerators_per_replica
    assert all(b.get("GPU") == 1 for b in bundles) and bundles[0].get("CPU", 0) >= 1
    assert replica.placement_group_strategy == placement(spec_id).strategy
