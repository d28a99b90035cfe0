"""The package boundaries the tree promises, checked on the source.

- The operator imports shardserve only through `shardserve.api`, the contract.
- `shardserve.api` is pure: loading it loads no Ray, vLLM, web framework or
  OpenTelemetry, and it imports nothing from the runtime packages.
- Every name in `shardserve.api.contract` that points at code, and every
  vLLM plugin entry point, names something that exists.
- Ray's private API is used in one module, `shardserve.serve.ray_private`.
"""

from __future__ import annotations

import ast
import importlib
import json
import pkgutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from shardserve.api import contract

ROOT = Path(__file__).resolve().parents[1]
SHARDSERVE = ROOT / "platform" / "shardserve"
API = SHARDSERVE / "api"
RAY_PRIVATE = SHARDSERVE / "serve" / "ray_private.py"
OPERATOR = ROOT / "operators" / "shardserve_operator"
HEAVY = ("ray", "vllm", "torch", "transformers", "fastapi", "starlette", "opentelemetry", "numpy", "pandas")


def imported_modules(path: Path) -> Iterator[tuple[int, str]]:
    """(line, module) for every absolute import in a file, at any depth."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from ((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.lineno, node.module


def _is_within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _root_name(node: ast.expr) -> str:
    while isinstance(node, (ast.Attribute, ast.Call)):
        node = node.value if isinstance(node, ast.Attribute) else node.func
    return node.id if isinstance(node, ast.Name) else ""


def private_ray_uses(path: Path) -> Iterator[tuple[int, str]]:
    """(line, what) for each private Ray module or name imported, each private
    attribute of a name bound to Ray, and each private keyword passed to Ray.

    Private attributes of Ray objects reached through `self` or `super()`
    (an overridden hook) are beyond a syntax check.
    """
    tree = ast.parse(path.read_text())
    bound: set[str] = set()  # names that refer to Ray modules, classes and functions
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if _is_within(alias.name, "ray"):
                    bound.add(alias.asname or alias.name.split(".")[0])
                    if any(map(_is_private, alias.name.split("."))):
                        yield node.lineno, f"import {alias.name}"
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and _is_within(node.module, "ray"):
            bound.update(alias.asname or alias.name for alias in node.names)
            if any(map(_is_private, node.module.split("."))):
                yield node.lineno, f"from {node.module} import"
            yield from ((node.lineno, f"{node.module}.{alias.name}") for alias in node.names if _is_private(alias.name))
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _is_private(node.attr) and _root_name(node.value) in bound:
            yield node.lineno, f"{_root_name(node.value)}...{node.attr}"
        elif isinstance(node, ast.Call) and _root_name(node.func) in bound:
            yield from ((node.lineno, f"{_root_name(node.func)}(...{k.arg}=)")
                        for k in node.keywords if k.arg and _is_private(k.arg))


def test_the_operator_imports_shardserve_only_through_the_api():
    outside = [f"{path.relative_to(ROOT)}:{line} imports {module}"
               for path in sorted(OPERATOR.rglob("*.py"))
               for line, module in imported_modules(path)
               if _is_within(module, "shardserve") and not _is_within(module, "shardserve.api")]
    assert outside == []


def test_the_api_imports_no_runtime_package_and_no_heavy_library():
    runtime = ("shardserve.serve", "shardserve.local", "shardserve.bench", "shardserve.cli", "shardserve_operator")
    found = [f"{path.relative_to(ROOT)}:{line} imports {module}"
             for path in sorted(API.rglob("*.py"))
             for line, module in imported_modules(path)
             if any(_is_within(module, name) for name in runtime + HEAVY)]
    assert found == []


def test_loading_the_api_loads_no_heavy_library():
    """The same rule at run time: every module of the package, imported in a fresh interpreter."""
    names = [f"shardserve.api.{m.name}" for m in pkgutil.iter_modules([str(API)])]
    assert "shardserve.api.spec" in names and "shardserve.api.contract" in names
    code = (f"import importlib, json, sys; [importlib.import_module(n) for n in {names!r}]; "
            "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert set(json.loads(out.stdout)) & set(HEAVY) == set()


def test_the_rule_catches_a_runtime_import(tmp_path):
    """The AST walk sees imports inside functions too, where a lazy import would hide."""
    module = tmp_path / "leaky.py"
    module.write_text("def f():\n    from shardserve.serve.replica import ShardserveServer\n")
    assert [m for _, m in imported_modules(module)] == ["shardserve.serve.replica"]


def test_only_ray_private_uses_rays_private_api():
    found = [f"{path.relative_to(ROOT)}:{line} {what}"
             for path in sorted(SHARDSERVE.rglob("*.py")) if path != RAY_PRIVATE
             for line, what in private_ray_uses(path)]
    assert found == []
    assert list(private_ray_uses(RAY_PRIVATE)), "the rule sees nothing in the module it exempts"


def test_the_private_ray_rule_catches_each_form(tmp_path):
    module = tmp_path / "leaky.py"
    module.write_text(
        "import ray\n"
        "import ray._private.utils\n"
        "from ray import serve\n"
        "from ray.llm._internal.serve.utils.batcher import Batcher\n"
        "from ray.serve.context import _get_global_client\n"
        "from ray.serve.llm.deployment import LLMServer\n"
        "def f(app):\n"
        "    serve._run(app, _blocking=False)\n"
        "    ray.init(_metrics_export_port=8080)\n"
        "    return LLMServer._get_batch_interval_ms, self._llm_config\n"
    )
    assert sorted(line for line, _ in private_ray_uses(module)) == [2, 4, 5, 8, 8, 9, 10]


@pytest.mark.parametrize("name", ["APP_IMPORT_PATH", "POLICY_CLASS", "SPAN_PROCESSORS_IMPORT_PATH", "COLD_START_CALLBACK"])
def test_contract_import_paths_name_what_exists(name):
    module, _, attr = getattr(contract, name).partition(":")
    assert callable(getattr(importlib.import_module(module), attr))


def test_vllm_plugin_entry_points_name_what_exists():
    """Checked on the source (importing the plugins loads vLLM): the module exists and defines the name."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    groups = pyproject["project"]["entry-points"]
    targets = [target for group in ("vllm.stat_logger_plugins", "vllm.general_plugins")
               for target in groups[group].values()]
    assert len(targets) == 2
    for target in targets:
        module, _, attr = target.partition(":")
        spec = importlib.util.find_spec(module)
        assert spec is not None and spec.origin, f"{target}: no module {module}"
        tree = ast.parse(Path(spec.origin).read_text())
        defined = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
        assert attr in defined, f"{target}: {module} defines no {attr}"
