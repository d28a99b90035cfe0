"""Kubernetes resource quantities ('4', '500m', '16Gi'): one pattern for the
spec, the CRD and every place that needs the number."""

from __future__ import annotations

import re
from typing import Optional

# The forms the spec accepts (a subset of Kubernetes': no exponents).
QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$")

_UNITS = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18,
          "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60, "m": 1e-3}


def check_quantity(value: Optional[str]) -> Optional[str]:
    """A pydantic validator: the value as is, or a ValueError saying what a quantity looks like."""
    if value is not None and not QUANTITY.match(value):
        raise ValueError(f"{value!r} is not a Kubernetes quantity (e.g. '4', '500m', '16Gi')")
    return value


def parse_quantity(quantity: str) -> float:
    """Kubernetes quantity -> number ('512Mi' -> 536870912, '500m' -> 0.5)."""
    match = QUANTITY.match(quantity)
    if not match:
        raise ValueError(f"not a quantity: {quantity!r}")
    unit = match.group(2) or ""
    return float(quantity[: len(quantity) - len(unit)]) * _UNITS[unit]
