"""What the API server does to a custom resource on create, for tests without one.

In the order the API server does it: drop nulls (no field is nullable),
apply the schema's defaults, validate against the openAPIV3Schema with
unknown fields rejected (kubectl's default, --validate=strict), then
evaluate the `x-kubernetes-validations` CEL rules on every node that is
present, with `self` bound to that node. CEL runs on a CEL implementation
from PyPI (common-expression-language), not on Kubernetes' own; the rules
use only the standard CEL the two share (has, size, matches, string).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import cel
import jsonschema


def drop_nulls(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: drop_nulls(v) for k, v in obj.items() if v is not None}
    if isinstance(obj, list):
        return [drop_nulls(v) for v in obj]
    return obj


def apply_defaults(schema: dict[str, Any], obj: Any) -> Any:
    """Structural defaulting: a missing property with a default gets it, then its own defaults."""
    if isinstance(obj, dict) and schema.get("type") == "object":
        for name, child in (schema.get("properties") or {}).items():
            if name not in obj and "default" in child:
                obj[name] = copy.deepcopy(child["default"])
            if name in obj:
                obj[name] = apply_defaults(child, obj[name])
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for key in obj:
                obj[key] = apply_defaults(extra, obj[key])
    elif isinstance(obj, list) and "items" in schema:
        return [apply_defaults(schema["items"], item) for item in obj]
    return obj


def to_jsonschema(node: dict[str, Any]) -> dict[str, Any]:
    """OpenAPI v3 (as CRDs use it) -> JSON Schema draft 4, unknown fields rejected."""
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "properties":
            out[key] = {name: to_jsonschema(child) for name, child in value.items()}
        elif key in ("items", "additionalProperties") and isinstance(value, dict):
            out[key] = to_jsonschema(value)
        elif key.startswith("x-kubernetes-") or key in ("default", "description"):
            continue
        else:
            out[key] = value
    if node.get("type") == "object" and "properties" in node and not node.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    return out


def schema_errors(schema: dict[str, Any], obj: Any) -> list[str]:
    validator = jsonschema.Draft4Validator(to_jsonschema(schema), format_checker=jsonschema.FormatChecker())
    errors = []
    for error in sorted(validator.iter_errors(obj), key=lambda e: list(e.absolute_path)):
        where = ".".join(str(p) for p in error.absolute_path) or "(root)"
        errors.append(f"{where}: {error.message}")
    return errors


def _nodes(schema: dict[str, Any], obj: Any, path: str) -> Iterator[tuple[str, dict[str, Any], Any]]:
    yield path, schema, obj
    if isinstance(obj, dict):
        for name, child in (schema.get("properties") or {}).items():
            if name in obj:
                yield from _nodes(child, obj[name], f"{path}.{name}" if path else name)
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for key, value in obj.items():
                yield from _nodes(extra, value, f"{path}.{key}")
    elif isinstance(obj, list) and "items" in schema:
        for index, item in enumerate(obj):
            yield from _nodes(schema["items"], item, f"{path}[{index}]")


def failed_rules(schema: dict[str, Any], obj: Any) -> list[tuple[str, str]]:
    """(rule, message) of each CEL rule that does not hold; a rule that cannot be evaluated fails."""
    failed = []
    for path, node, value in _nodes(schema, obj, ""):
        for rule in node.get("x-kubernetes-validations", ()):
            context = {"self": value}
            try:
                holds = cel.evaluate(rule["rule"], context)
            except Exception as err:  # noqa: BLE001 - the API server reports these as invalid too
                failed.append((rule["rule"], f"{path or '(root)'}: rule could not be evaluated: {err}"))
                continue
            if holds is not True:
                message = rule["message"]
                if "messageExpression" in rule:
                    message = cel.evaluate(rule["messageExpression"], context)
                field = path + rule.get("fieldPath", "") if path else rule.get("fieldPath", "(root)")
                failed.append((rule["rule"], f"{field}: {message}"))
    return failed


def list_map_errors(schema: dict[str, Any], obj: Any) -> list[str]:
    """Entries of an `x-kubernetes-list-type: map` list that repeat its keys (the
    API server's "Duplicate value")."""
    errors = []
    for path, node, value in _nodes(schema, obj, ""):
        if node.get("x-kubernetes-list-type") != "map" or not isinstance(value, list):
            continue
        keys = node["x-kubernetes-list-map-keys"]
        seen: set[tuple[Any, ...]] = set()
        for index, item in enumerate(value):
            key = tuple(item.get(k) for k in keys)
            if key in seen:
                errors.append(f"{path}[{index}]: Duplicate value: {dict(zip(keys, key, strict=True))}")
            seen.add(key)
    return errors


def rule_errors(schema: dict[str, Any], obj: Any) -> list[str]:
    return [message for _, message in failed_rules(schema, obj)]


def admit(crd: dict[str, Any], obj: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The object as it would be stored, and every reason the API server would reject it."""
    (version,) = crd["spec"]["versions"]
    schema = version["schema"]["openAPIV3Schema"]
    stored = apply_defaults(schema, drop_nulls(copy.deepcopy(obj)))
    errors = schema_errors(schema, stored) + list_map_errors(schema, stored)
    if errors:  # CEL rules assume a well-typed object
        return stored, errors
    return stored, rule_errors(schema, stored)
