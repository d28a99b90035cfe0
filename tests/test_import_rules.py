"""The package boundaries the tree promises, checked on the source.

- The operator imports shardserve only through `shardserve.api`, the contract.
- `shardserve.api` is pure: loading it loads no Ray, vLLM, web framework or
  OpenTelemetry, and it imports nothing from the runtime packages.
- Every name in `shardserve.api.contract` that points at code, and every
  vLLM plugin entry point, names something that exists.
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
API = ROOT / "platform" / "shardserve" / "api"
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


@pytest.mark.parametrize("name", ["APP_IMPORT_PATH", "POLICY_CLASS", "SPAN_PROCESSORS_IMPORT_PATH", "SERVER_CLS",
                                  "COLD_START_CALLBACK"])
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
