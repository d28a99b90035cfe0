"""What `shardserve run` does with an edit of its file, and the Serve config
it deploys: tenants' limits travel outside the args Serve hashes."""

import copy
import io
from pathlib import Path
from typing import Any

import pytest
import yaml
from ray.serve._private.deploy_utils import get_app_code_version
from ray.serve.schema import ServeApplicationSchema

from shardserve.api.serve_config import build_application_config
from shardserve.api.validation import parse_deployment
from shardserve.local.edits import logical_cpus_needed, plan_edit

TINY = Path(__file__).resolve().parents[1] / "manifests" / "examples" / "tiny-cpu.yaml"
TENANTS = {"default": {"requestsPerMinute": 60}, "keys": [{"name": "batch", "priority": "low"}]}


def _doc(**spec: Any) -> dict[str, Any]:
    doc = yaml.safe_load(TINY.read_text())
    doc["spec"].update(copy.deepcopy(spec))
    return doc


def _md(**spec: Any):
    return parse_deployment(_doc(**spec), source="test")


def _code_version(md) -> str:
    """Serve's own code version of the application config (Ray 2.60)."""
    return get_app_code_version(ServeApplicationSchema.model_validate(build_application_config(md)))


def test_tenants_limits_are_the_user_config_not_the_args():
    md = _md(tenants=TENANTS)
    app = build_application_config(md)
    assert app["args"]["spec"]["tenants"] == {}
    assert app["deployments"][0]["user_config"]["tenants"]["keys"] == [{"name": "batch", "priority": "low"}]
    # The args still parse, with tenants on: build_app sets vLLM's priority scheduling from them.
    assert parse_deployment(app["args"], source="args").spec.tenants is not None
    assert "user_config" not in build_application_config(_md())["deployments"][0]


def test_serve_keeps_the_code_version_when_only_limits_change():
    before = _md(tenants=TENANTS)
    after = _md(tenants={**TENANTS, "default": {"requestsPerMinute": 5}})
    assert _code_version(before) == _code_version(after)
    assert _code_version(before) != _code_version(_md())  # tenants on or off: a new engine


@pytest.mark.parametrize("edit", [
    {"tenants": {**TENANTS, "default": {"tokensPerMinute": 1000}}},
    {"replicas": 2},
])
def test_edits_serve_applies_in_place_are_applied(edit):
    old = _md(tenants=TENANTS)
    plan = plan_edit(old, _md(**{"tenants": TENANTS, **edit}), logical_cpus=8)
    assert plan is not None and plan.apply
    assert f"spec.{next(iter(edit))}" in plan.message


@pytest.mark.parametrize("edit, says", [
    ({"engine": {"maxModelLen": 128, "dtype": "float32", "kvCacheMemory": "256Mi"}}, "spec.engine"),
    ({"tenants": None}, "spec.tenants"),
    ({"telemetry": {"tracing": {"endpoint": "http://127.0.0.1:4318"}}}, "spec.telemetry"),
])
def test_edits_that_restart_replicas_are_left_for_a_restart(edit, says):
    plan = plan_edit(_md(tenants=TENANTS), _md(**{"tenants": TENANTS, **edit}), logical_cpus=8)
    assert plan is not None and not plan.apply
    assert says in plan.message and "still serving" in plan.message


def test_more_replicas_than_the_local_ray_holds_are_refused():
    old, new = _md(), _md(replicas=3)
    assert logical_cpus_needed(new) == 9  # (1 engine worker + the replica's actor) x 3 + 3
    plan = plan_edit(old, new, logical_cpus=8)
    assert plan is not None and not plan.apply and "9 logical CPUs" in plan.message


def test_a_new_name_is_refused_and_no_change_is_nothing():
    renamed = _doc()
    renamed["metadata"]["name"] = "other"
    plan = plan_edit(_md(), parse_deployment(renamed, source="test"), logical_cpus=8)
    assert plan is not None and not plan.apply and "'other'" in plan.message
    assert plan_edit(_md(), _md(), logical_cpus=8) is None


def test_an_edit_serve_refuses_leaves_the_previous_spec_serving(tmp_path, monkeypatch):
    """`shardserve run`'s watch loop: an invalid edit and an edit Serve's
    controller refuses are both reported, and the loop goes on."""
    from shardserve.local import run
    from shardserve.serve import ray_private

    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(_doc(tenants=TENANTS)))
    edits = [
        "spec: [not, a, mapping]\n",  # invalid
        yaml.safe_dump(_doc(tenants={**TENANTS, "default": {"requestsPerMinute": 5}})),  # valid, refused
    ]
    applied: list[Any] = []

    def refuse(applications: list[dict[str, Any]]) -> None:
        applied.append(applications)
        raise RuntimeError("the controller said no")

    def next_poll(_seconds: float) -> None:
        if not edits:
            raise run._Stop("SIGTERM")
        path.write_text(edits.pop(0))

    monkeypatch.setattr(ray_private, "apply_serve_config", refuse)
    monkeypatch.setattr(run.time, "sleep", next_poll)
    out = io.StringIO()
    with pytest.raises(run._Stop):
        run._follow_edits(str(path), _md(tenants=TENANTS), 8, out)
    said = out.getvalue()
    assert "invalid ModelDeployment" in said and said.count("still serving the previous spec") == 2, said
    assert "Serve did not take the edit (the controller said no)" in said
    [[app]] = applied
    assert app["deployments"][0]["user_config"]["tenants"]["default"] == {"requestsPerMinute": 5, "priority": "normal"}


def test_a_chat_template_file_goes_inline_into_the_local_serve_config(tmp_path):
    """Serve builds the application from its args, away from the spec file
    (a cluster refuses `file`): `shardserve run` reads the file in."""
    from shardserve.api.validation import load_file
    from shardserve.local.run import _serve_config

    (tmp_path / "chat.jinja").write_text("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(_doc(chat={"template": {"file": "chat.jinja"}})))
    [app] = _serve_config(load_file(path))
    assert app["args"]["spec"]["chat"]["template"] == {
        "inline": "{% for m in messages %}{{ m['content'] }}{% endfor %}"}
    # What Serve's builder parses: valid without the spec file's directory.
    assert parse_deployment(app["args"], source="args").spec.chat.template.inline is not None
