"""KubeRay's published RayService CRD, when its folder sits next to the project (see the README there).

The file is large (about 1 MB of YAML): it is parsed once per test session and
shared, so a test that changes it must change a copy.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import pytest

from shardserve.api.yaml_loading import safe_load

ROOT = Path(__file__).resolve().parents[1]
KUBERAY_CRD = ROOT.parent / "shared" / "kuberay" / "ray.io_rayservices.yaml"


def load_rayservice_crd(why_needed: str) -> dict[str, Any]:
    """The CRD; skips the calling test, saying `why_needed`, when the file is absent."""
    if not KUBERAY_CRD.is_file():
        pytest.skip(f"KubeRay's RayService CRD is not at {KUBERAY_CRD}; {why_needed}")
    return _parse()


def rayservice_v1_schema(why_needed: str) -> dict[str, Any]:
    """The CRD's openAPIV3Schema of ray.io/v1."""
    (v1,) = [v for v in load_rayservice_crd(why_needed)["spec"]["versions"] if v["name"] == "v1"]
    return v1["schema"]["openAPIV3Schema"]


@cache
def _parse() -> dict[str, Any]:
    return safe_load(KUBERAY_CRD.read_text())
