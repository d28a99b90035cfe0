"""Fixtures for the operator suite: an API server on 127.0.0.1 and the real operator (kopf) against it."""

from __future__ import annotations

import logging

import aiohttp
import kmock
import pytest
import pytest_asyncio

from cluster_emulator import ClusterEmulator
from operator_harness import Cluster, eventually, kopf_is_watching, operator_settings, start_operator


@pytest.fixture(autouse=True)
def root_logger_as_in_the_operators_process():
    """The root logger without the JSON handler Ray puts there when ray.serve.llm is imported (other test
    modules import it; the operator's process has no Ray). kopf's records carry kopf's settings object in
    their extras, which that handler cannot encode: it printed a logging error for each."""
    root = logging.getLogger()
    rays = [h for h in root.handlers if type(h.formatter).__module__.split(".")[0] == "ray"]
    for handler in rays:
        root.removeHandler(handler)
    yield
    for handler in rays:
        root.addHandler(handler)


@pytest_asyncio.fixture
async def cluster():
    async with ClusterEmulator() as emulator, kmock.Server(emulator) as server:
        emulator.declare_resources()
        async with aiohttp.ClientSession() as session:
            yield Cluster(emulator, str(server.url).rstrip("/"), session)


@pytest_asyncio.fixture
async def operator(cluster: Cluster):
    running = await start_operator(operator_settings(cluster.url))
    await eventually(lambda: kopf_is_watching(cluster.emulator), 15, "kopf to watch every kind")
    yield running
    assert await running.stop() == 0
