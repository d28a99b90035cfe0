"""The import path RayServices name in serveConfigV2 (`shardserve.app:build_app`).

Kept stable across releases: the operator writes it into every RayService, so
moving it would break RayServices rendered by an older operator."""

from shardserve.serve.app import build_app

__all__ = ["build_app"]
