"""The API server emulator itself: lookups by key and index, and watch bookmarks."""

from __future__ import annotations

import asyncio
import json

import kmock
import pytest

from indexed_emulator import IndexedObjects
from operator_harness import MD_PATH, SVC_PATH, tiny_document

pytestmark = pytest.mark.asyncio


def service(name: str) -> dict:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name}, "spec": {"ports": [{"port": 80}]}}


async def names(cluster, path: str) -> list[str]:
    status, body = await cluster.request("GET", path)
    assert status == 200, body
    return sorted(item["metadata"]["name"] for item in body["items"])


async def test_requests_are_served_without_scanning_objects_or_past_requests(cluster, monkeypatch):
    for i in range(3):
        await cluster.create(SVC_PATH.format(ns="default"), service(f"s{i}"))

    def scan(*_args, **_kwargs):
        raise AssertionError("scanned")

    # kmock finds an object by iterating every stored one, and a reaction by re-filtering every request.
    monkeypatch.setattr(IndexedObjects, "items", scan)
    monkeypatch.setattr(IndexedObjects, "__iter__", scan)
    monkeypatch.setattr(kmock.View, "__contains__", scan)
    path = SVC_PATH.format(ns="default")
    await cluster.create(path, service("new"))
    assert (await cluster.request("GET", path + "/new"))[0] == 200
    assert (await cluster.request("GET", path + "/absent"))[0] == 404
    await cluster.patch(path + "/new", {"metadata": {"labels": {"a": "b"}}})
    status, current = await cluster.request("GET", path + "/new")
    assert (await cluster.request("PUT", path + "/new", current))[0] == 200
    assert await names(cluster, path) == ["new", "s0", "s1", "s2"]
    assert (await cluster.request("DELETE", path + "/new"))[0] == 200
    assert (await cluster.request("GET", path + "/new"))[0] == 404
    assert not [err for err in cluster.emulator.errors if isinstance(err, AssertionError)]


async def test_lists_by_namespace_and_across_namespaces_follow_creates_and_deletes(cluster):
    for ns in ("default", "team-a"):
        await cluster.create_md(tiny_document("m", ns))
        await cluster.create_md(tiny_document(f"only-{ns}", ns))
    await cluster.create(SVC_PATH.format(ns="team-a"), service("m"))
    assert await names(cluster, MD_PATH.format(ns="team-a")) == ["m", "only-team-a"]
    assert await names(cluster, "/apis/shardserve.dev/v1alpha1/modeldeployments") == \
        ["m", "m", "only-default", "only-team-a"]
    assert await names(cluster, "/api/v1/services") == ["m"]
    assert (await cluster.request("DELETE", MD_PATH.format(ns="team-a") + "/m"))[0] == 200
    assert await names(cluster, MD_PATH.format(ns="team-a")) == ["only-team-a"]
    assert await names(cluster, MD_PATH.format(ns="default")) == ["m", "only-default"]
    await cluster.create_md(tiny_document("m", "team-a"))  # the same name again
    assert await names(cluster, MD_PATH.format(ns="team-a")) == ["m", "only-team-a"]
    assert await names(cluster, MD_PATH.format(ns="team-b")) == []


async def test_a_quiet_watch_gets_bookmarks_when_it_asks_for_them(cluster):
    cluster.emulator.bookmark_seconds = 0.2
    created = await cluster.create_md(tiny_document())
    rv = created["metadata"]["resourceVersion"]

    async def first_line(query: str) -> dict:
        async with cluster.session.get(cluster.url + MD_PATH.format(ns="default") + query) as response:
            return json.loads(await asyncio.wait_for(response.content.readline(), 5))

    bookmark = await first_line(f"?watch=true&allowWatchBookmarks=true&resourceVersion={rv}")
    assert bookmark == {"type": "BOOKMARK", "object": {"apiVersion": "shardserve.dev/v1alpha1",
                                                        "kind": "ModelDeployment", "metadata": {"resourceVersion": rv}}}
    with pytest.raises(asyncio.TimeoutError):
        async with cluster.session.get(cluster.url + MD_PATH.format(ns="default") +
                                       f"?watch=true&resourceVersion={rv}") as response:
            await asyncio.wait_for(response.content.readline(), 0.6)
