"""Parsing YAML with libyaml's parser when PyYAML was built with it, else with PyYAML's own.

libyaml parses several times faster. Both loaders build values with the same
safe constructor and resolver, so they return the same objects; only the
wording of a syntax error differs (its line and column do not).

Dumping stays on PyYAML's emitter: libyaml's wraps long double-quoted
strings at other places, so the same values would render as other text.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import yaml

SafeLoader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def safe_load(text: str) -> Any:
    """One YAML document, as PyYAML's `safe_load` returns it."""
    return yaml.load(text, Loader=SafeLoader)


def safe_load_all(text: str) -> Iterator[Any]:
    """Each document of a YAML stream, as PyYAML's `safe_load_all` yields them."""
    return yaml.load_all(text, Loader=SafeLoader)
