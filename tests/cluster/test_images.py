"""The Dockerfiles agree with the project: pins, users, entry points, and what the operator imports.

No container engine runs here; these read the Dockerfiles and check them
against pyproject.toml, the chart and the operator's real import closure.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import yaml
from packaging.requirements import Requirement

from shardserve_operator.render.options import DEFAULT_IMAGE, RAY_VERSION

ROOT = Path(__file__).resolve().parents[2]
RUNTIME = ROOT / "platform" / "Dockerfile"
OPERATOR = ROOT / "operators" / "Dockerfile"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
VALUES = yaml.safe_load((ROOT / "charts" / "shardserve" / "values.yaml").read_text())
CHART = yaml.safe_load((ROOT / "charts" / "shardserve" / "Chart.yaml").read_text())


def _arg(dockerfile: Path, name: str) -> str:
    match = re.search(rf"^ARG {name}=(\S+)$", dockerfile.read_text(), re.M)
    assert match, f"{dockerfile.relative_to(ROOT)} has no ARG {name}"
    return match.group(1)


def _project_requirements() -> dict[str, Requirement]:
    reqs = [Requirement(r) for r in PYPROJECT["project"]["dependencies"]]
    return {r.name.lower(): r for r in reqs}


def test_runtime_image_uses_the_ray_the_project_pins():
    ray = _project_requirements()["ray"]
    assert str(ray.specifier) == f"=={RAY_VERSION}"
    assert _arg(RUNTIME, "RAY_VERSION") == RAY_VERSION
    text = RUNTIME.read_text()
    python = PYPROJECT["project"]["requires-python"]  # ">=3.11,<3.12"
    assert "3.11" in python and "-py311-gpu" in text and "-py311-cpu" in text
    # The engine comes from the project's own extras, so the image and CI agree on vLLM.
    assert '".[${VARIANT}]"' in text
    assert set(PYPROJECT["project"]["optional-dependencies"]) >= {"gpu", "cpu"}
    assert _arg(RUNTIME, "VARIANT") == "gpu"


def test_runtime_image_runs_as_ray_not_root():
    lines = [line for line in RUNTIME.read_text().splitlines() if line.startswith("USER ")]
    assert lines and lines[-1] == "USER 1000"


def test_operator_image_is_slim_and_non_root():
    text = OPERATOR.read_text()
    assert "-slim" in text and "--no-deps ." in text
    users = [line for line in text.splitlines() if line.startswith("USER ")]
    assert users[-1] == "USER 65532:65532"
    assert 'ENTRYPOINT ["shardserve"]' in text and 'CMD ["operator"]' in text


def _operator_pins() -> dict[str, Requirement]:
    pins = re.findall(r'^\s+"([^"]+)" \\?$', OPERATOR.read_text(), re.M)
    return {Requirement(p).name.lower(): Requirement(p) for p in pins}


def test_operator_image_pins_match_pyproject():
    pins, project = _operator_pins(), _project_requirements()
    assert set(pins) == {"pydantic", "pyyaml", "jinja2", "kubernetes", "kopf", "prometheus-client"}
    for name, requirement in pins.items():
        assert str(requirement.specifier) == str(project[name].specifier), name


def _closure(names: set[str]) -> set[str]:
    """Distributions `names` pull in (installed metadata, no extras)."""
    seen: set[str] = set()
    todo = list(names)
    while todo:
        name = todo.pop().lower().replace("_", "-")
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        for raw in requires:
            req = Requirement(raw)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return seen


def _module_level_imports(path: str) -> set[str]:
    """Top-level names a module imports when it loads (not inside functions)."""
    tree = ast.parse(Path(path).read_text())
    roots: set[str] = set()
    todo = list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
        elif isinstance(node, (ast.If, ast.Try)):
            todo += node.body + node.orelse + getattr(node, "finalbody", [])
            todo += [stmt for handler in getattr(node, "handlers", []) for stmt in handler.body]
    return roots


def test_operator_imports_only_what_its_image_installs():
    """What `shardserve operator` loads must come from the distributions operators/Dockerfile installs."""
    code = (
        "import json, sys, shardserve.cli; shardserve.cli.build_parser(); "
        "import shardserve_operator.main, shardserve_operator.reconcile, shardserve_operator.handlers; "
        "print(json.dumps({'all': sorted({m.split('.')[0] for m in sys.modules}), 'ours': sorted("
        "m.__file__ for n, m in list(sys.modules.items()) "
        "if n.split('.')[0] in ('shardserve', 'shardserve_operator') and getattr(m, '__file__', None))}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    loaded = json.loads(out.stdout)
    heavy = set(loaded["all"]) & {"ray", "vllm", "torch", "pandas", "pyarrow", "numpy", "opentelemetry", "transformers"}
    assert not heavy, f"the operator loads {heavy}, which its slim image does not have"
    needed = set().union(*(_module_level_imports(path) for path in loaded["ours"]))
    needed -= set(sys.stdlib_module_names) | {"shardserve", "shardserve_operator", "__future__"}
    owners = metadata.packages_distributions()
    allowed = _closure(set(_operator_pins()))
    outside = sorted(m for m in needed
                     if not {d.lower().replace("_", "-") for d in owners.get(m, [m])} & allowed)
    assert outside == [], f"the operator's code imports what its image does not install: {outside}"
    assert {"kopf", "kubernetes", "pydantic", "yaml"} <= needed


def test_chart_names_the_images_and_the_default_runtime_matches_the_operator():
    assert VALUES["image"]["repository"].endswith("/shardserve-operator")
    runtime = f"{VALUES['runtimeImage']['repository']}:{VALUES['runtimeImage']['tag'] or CHART['appVersion']}"
    assert runtime == DEFAULT_IMAGE
    assert CHART["appVersion"] == PYPROJECT["project"]["version"]
