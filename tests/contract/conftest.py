"""The contract tests call Ray's code but never start Ray."""

from __future__ import annotations

import pytest
import ray
import ray._private.auto_init_hook


@pytest.fixture(autouse=True, scope="module")
def no_ray_autostart():
    """RAY_ENABLE_AUTO_CONNECT=0, also for a Ray imported earlier: an API that needs Ray fails instead.

    Some of Ray's functions (ray.get_runtime_context() among them) start a
    local Ray instance when none is connected.
    """
    connected = ray.is_initialized()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAY_ENABLE_AUTO_CONNECT", "0")
        patch.setattr(ray._private.auto_init_hook, "enable_auto_connect", False)
        yield
    assert ray.is_initialized() == connected, "a contract test started Ray"
