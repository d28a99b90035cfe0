"""Where weights come from: the URI schemes a spec accepts for a model (and
its adapters), checked the same way for each."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import PurePosixPath
from typing import Optional

from shardserve.api.contract import PVC_MOUNT_ROOT

SOURCE_SCHEMES = ("hf", "s3", "gs", "pvc", "file", "builtin")
BUILTIN_MODELS = ("tiny",)
# LoRA adapters of the tiny model, built like it (shardserve.builtin.tiny_adapters).
BUILTIN_ADAPTERS = ("tiny-a", "tiny-b")
# Sources under which any adapter can be asked for by name (a prefix).
DYNAMIC_SCHEMES = ("s3", "gs", "pvc", "file")


def check_source(value: str, builtins: Sequence[str], kind: str = "model") -> str:
    """`value` when it is SCHEME://LOCATION with a known scheme, else ValueError."""
    scheme, sep, rest = value.partition("://")
    if not sep or scheme not in SOURCE_SCHEMES:
        raise ValueError(f"{value!r} must start with one of " + ", ".join(f"{s}://" for s in SOURCE_SCHEMES))
    if not rest.strip("/"):
        raise ValueError(f"{value!r} names no {kind} after {scheme}://")
    if scheme == "builtin" and rest not in builtins:
        raise ValueError(f"builtin {kind}s are {', '.join(builtins)}; got {rest!r}")
    if scheme == "file" and not rest.startswith("/"):
        raise ValueError(f"file:// needs an absolute path (file:///models/x); got {value!r}")
    return value


def source_pattern(builtins: Sequence[str]) -> str:
    """What `check_source` accepts, as one regular expression (for the CRD)."""
    remote = "|".join(s for s in SOURCE_SCHEMES if s not in ("file", "builtin"))
    return rf"^(?:(?:{remote})://.*[^/].*|file:///.*[^/].*|builtin://(?:{'|'.join(builtins)}))$"


def mounted_path(source: str) -> Optional[PurePosixPath]:
    """Where a pvc:// or file:// source is inside a Ray pod (the operator mounts
    each claim at PVC_MOUNT_ROOT/CLAIM) or on this machine; None for others."""
    scheme, _, location = source.partition("://")
    if scheme == "pvc":
        return PurePosixPath(PVC_MOUNT_ROOT) / location.strip("/")
    if scheme == "file":
        return PurePosixPath("/" + location.lstrip("/"))
    return None
