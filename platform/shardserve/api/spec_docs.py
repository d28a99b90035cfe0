"""docs/spec.md: the ModelDeployment reference, generated from the CRD's descriptions.

The CRD is generated from spec.py (crd.py), so this page and the API server's
schema say the same thing. Regenerate after changing spec.py:

    python -m shardserve.api.spec_docs -o docs/spec.md
    python -m shardserve.api.spec_docs --check docs/spec.md   # exit 1 when stale
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from shardserve.api.crd import build_crd

COMMAND = "python -m shardserve.api.spec_docs -o docs/spec.md"


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _type(node: dict[str, Any]) -> str:
    kind = node.get("type", "")
    if kind == "array":
        return f"list of {_type(node.get('items') or {})}"
    if kind == "object" and isinstance(node.get("additionalProperties"), dict):
        return f"map of {_type(node['additionalProperties'])}"
    if node.get("x-kubernetes-preserve-unknown-fields") and not node.get("properties"):
        return "object (any keys)"
    if node.get("format") and kind == "string":
        return f"string ({node['format']})"
    return kind or "any"


def _bounds(node: dict[str, Any]) -> list[str]:
    out = []
    if "enum" in node:
        out.append("one of " + ", ".join(f"`{v}`" for v in node["enum"]))
    low = node.get("minimum")
    if low is not None:
        out.append(f"> {low}" if node.get("exclusiveMinimum") else f"≥ {low}")
    if node.get("maximum") is not None:
        out.append(f"≤ {node['maximum']}")
    if node.get("minLength") is not None or node.get("maxLength") is not None:
        out.append(f"{node.get('minLength', 0)}–{node['maxLength']} characters" if "maxLength" in node
                   else f"at least {node['minLength']} characters")
    return out


def _default(node: dict[str, Any]) -> str:
    if "default" not in node:
        return ""
    return f"`{json.dumps(node['default'])}`"


def _sections(node: dict[str, Any], path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every object with named fields, depth first, as (path, node)."""
    yield path, node
    for name, child in node.get("properties", {}).items():
        if child.get("properties"):
            yield from _sections(child, f"{path}.{name}")
        elif isinstance(child.get("items"), dict) and child["items"].get("properties"):
            yield from _sections(child["items"], f"{path}.{name}[]")


def _anchor(path: str) -> str:
    return "".join(c for c in path.lower() if c.isalnum() or c in "-_")


def _table(path: str, node: dict[str, Any]) -> list[str]:
    required = set(node.get("required", []))
    rows = ["| field | type | default | description |", "| --- | --- | --- | --- |"]
    for name, child in node.get("properties", {}).items():
        kind = _type(child)
        nested = child.get("properties") or (isinstance(child.get("items"), dict) and child["items"].get("properties"))
        if nested:
            target = f"{path}.{name}" + ("" if child.get("properties") else "[]")
            kind = f"[{kind}](#{_anchor(target)})"
        facts = (["required"] if name in required else []) + _bounds(child)
        if facts:
            kind += ", " + ", ".join(facts)
        rows.append(f"| `{name}` | {_cell(kind)} | {_cell(_default(child))} | {_cell(child.get('description', ''))} |")
    return rows


def _rules(node: dict[str, Any], path: str) -> Iterator[tuple[str, str]]:
    for rule in node.get("x-kubernetes-validations", []):
        yield path + rule.get("fieldPath", ""), rule["message"]
    for name, child in node.get("properties", {}).items():
        yield from _rules(child, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from _rules(node["items"], f"{path}[]")


def render_spec_docs() -> str:
    crd = build_crd()
    names = crd["spec"]["names"]
    version = crd["spec"]["versions"][0]
    root = version["schema"]["openAPIV3Schema"]
    lines = [
        f"# {names['kind']} reference",
        "",
        f"<!-- Generated from the CRD by `{COMMAND}`; do not edit by hand. -->",
        "",
        (f"`apiVersion: {crd['spec']['group']}/{version['name']}`, `kind: {names['kind']}`"
         f" (short name `{', '.join(names.get('shortNames', []))}`). {_cell(root.get('description', ''))}"),
        "",
        ("Every field and its description come from `platform/shardserve/api/spec.py`, through the CRD"
         " (`shardserve crd`). `shardserve validate FILE` checks a file without running it."),
        "",
    ]
    for top in ("spec", "status"):
        for path, node in _sections(root["properties"][top], top):
            lines += [f"## {path}", ""]
            if node.get("description"):
                lines += [_cell(node["description"]), ""]
            lines += _table(path, node) + [""]
    lines += ["## Rules across fields", "",
              "The API server enforces these at admission (CEL rules in the CRD).", "",
              "| field | rule |", "| --- | --- |"]
    for path, message in _rules(root, ""):
        lines.append(f"| `{path.lstrip('.') or '(whole object)'}` | {_cell(message)} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shardserve.api.spec_docs", description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", action="append", default=[], help="write the page here (repeatable)")
    parser.add_argument("--check", action="append", default=[], help="exit 1 if this file is not a fresh generation")
    args = parser.parse_args(argv)
    text = render_spec_docs()
    stale = [p for p in args.check if not Path(p).is_file() or Path(p).read_text() != text]
    for path in stale:
        print(f"{path} is stale; run: {COMMAND}", file=sys.stderr)
    for path in args.output:
        Path(path).write_text(text)
    if not args.output and not args.check:
        sys.stdout.write(text)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
