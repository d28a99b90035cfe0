"""Whether a child on the server still holds what was rendered for it (pure).

The comparison is apimachinery's equality.Semantic.DeepDerivative over
JSON: every value the render sets must be on the server, unchanged; what
the render leaves unset (a key it does not write, an empty string, list or
map) is not compared, because the API server fills such fields in
(defaults, a Service's clusterIP) and other controllers add their own
labels and annotations. A value absent on the server counts as its zero
(false, 0, ""), as the server drops zero fields when it serialises typed
objects. The limit that follows: a key added by hand where the render sets
none cannot be told from a default, and stays.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Optional

_ZERO: dict[type, Any] = {bool: False, int: 0, float: 0.0, str: "", list: [], dict: {}}


def _is_unset(value: Any) -> bool:
    return value is None or (isinstance(value, (str, list, dict)) and not value)


def find_drift(desired: Any, live: Any, path: str = "") -> Optional[str]:
    """The first path (`spec.selector.app`, `spec.ports[0].port`) where `live` lacks or changes a value
    `desired` sets; None when it holds them all."""
    if _is_unset(desired):
        return None
    if isinstance(desired, Mapping):
        if not isinstance(live, Mapping):
            return path
        for key, want in desired.items():
            at = f"{path}.{key}" if path else str(key)
            found = find_drift(want, live.get(key, _ZERO.get(type(want))), at)
            if found is not None:
                return found
        return None
    if isinstance(desired, list):
        if not isinstance(live, list) or len(live) != len(desired):
            return path
        for index, (want, have) in enumerate(zip(desired, live, strict=True)):
            found = find_drift(want, have, f"{path}[{index}]")
            if found is not None:
                return found
        return None
    return None if _same_scalar(desired, live) else path


def _same_scalar(desired: Any, live: Any) -> bool:
    """Equal and of one JSON type: 1 and 1.0 are one number; true and 1, or "1" and 1, are not."""
    if isinstance(desired, bool) or isinstance(live, bool):
        return desired is live
    if isinstance(desired, (int, float)) and isinstance(live, (int, float)):
        return desired == live
    return type(desired) is type(live) and bool(desired == live)


def find_child_drift(desired: Mapping[str, Any], live: Mapping[str, Any]) -> Optional[str]:
    """Where a child on the server departs from its rendered spec, labels or annotations; None if nowhere."""
    meta = desired.get("metadata") or {}
    owned = {"metadata": {"labels": meta.get("labels"), "annotations": meta.get("annotations")},
             "spec": desired.get("spec")}
    return find_drift(owned, live)
