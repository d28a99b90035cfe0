"""spec.chat in a cluster: a ConfigMap template is mounted where the replica's
vLLM reads it; typed chat options travel in the Serve app's args."""

from __future__ import annotations

import kubernetes_validate

from shardserve.api.contract import CHAT_TEMPLATE_DIR
from shardserve.api.validation import parse_deployment
from shardserve.api.yaml_loading import safe_load
from shardserve.serve.llm_config import build_llm_config
from shardserve_operator.render import RenderOptions, render_children
from tests.operator.test_operator_render import K8S_VERSION, by_kind
from tests.operator.test_render_for_kuberay import _with

TEMPLATE_REF = {"name": "chat-templates", "key": "llama.jinja"}


def _rayservice(doc: dict) -> dict:
    return by_kind(render_children(parse_deployment(doc), RenderOptions()))["RayService"]


def test_a_config_map_template_is_mounted_in_worker_pods_at_the_path_vllm_reads():
    doc = _with("llama-8b-1gpu", chat={"template": {"configMap": TEMPLATE_REF}, "toolCalling": {"parser": "llama3_json"}})
    rayservice = _rayservice(doc)
    pod = rayservice["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["template"]
    kubernetes_validate.validate(
        {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "w"}, "template": pod}, K8S_VERSION, strict=True)
    (volume,) = [v for v in pod["spec"]["volumes"] if "configMap" in v]
    assert volume["configMap"] == {"name": "chat-templates", "items": [{"key": "llama.jinja", "path": "llama.jinja"}]}
    (mount,) = [m for m in pod["spec"]["containers"][0]["volumeMounts"] if m["name"] == volume["name"]]
    assert mount == {"name": volume["name"], "mountPath": CHAT_TEMPLATE_DIR, "readOnly": True}
    # What the Serve controller builds from the rendered args names that file.
    (app,) = safe_load(rayservice["spec"]["serveConfigV2"])["applications"]
    kwargs = build_llm_config(parse_deployment(app["args"]))["engine_kwargs"]
    assert kwargs["chat_template"] == f"{CHAT_TEMPLATE_DIR}/llama.jinja"
    assert kwargs["tool_call_parser"] == "llama3_json" and kwargs["enable_auto_tool_choice"] is True


def test_no_template_no_volume():
    pod = _rayservice(_with("llama-8b-1gpu"))["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["template"]
    assert not [v for v in pod["spec"].get("volumes", []) if "configMap" in v]
