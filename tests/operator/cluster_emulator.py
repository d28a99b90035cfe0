"""kmock's stateful Kubernetes API, plus the server semantics the operator relies on.

kmock 0.8 stores objects and streams watch events, but leaves out what a real
API server adds: uid, resourceVersion and generation; 409 on a stale
resourceVersion; PUT (replace); the status subresource; DeleteOptions
preconditions; watches resuming from a resourceVersion; a watch's bookmarks
(a client that hears nothing for long reconnects). This subclass adds
those, serves every request through the same HTTP port, and can inject
faults (409/429/5xx, with Retry-After) that reject a request before it
changes anything. It still has no admission, defaulting, label selectors or
garbage collection.

It serves in time that does not grow with the test (indexed_emulator).
"""

from __future__ import annotations

import asyncio
import copy
import json
import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar, Optional

import aiohttp.web
import attrs
import jsonpatch
import kmock
from kmock._internal import dicts, enums, rendering

from indexed_emulator import IndexedEmulator

# resource -> (kind, namespaced, has status subresource)
RESOURCES = {
    "shardserve.dev/v1alpha1/modeldeployments": ("ModelDeployment", True, True),
    "ray.io/v1/rayservices": ("RayService", True, True),
    "ray.io/v1/rayclusters": ("RayCluster", True, True),
    "v1/persistentvolumeclaims": ("PersistentVolumeClaim", True, True),
    "v1/services": ("Service", True, True),
    "networking.k8s.io/v1/ingresses": ("Ingress", True, True),
    "v1/events": ("Event", True, False),
    "coordination.k8s.io/v1/leases": ("Lease", True, False),
    "v1/namespaces": ("Namespace", False, True),
}
VERBS = ["get", "list", "watch", "create", "update", "patch", "delete"]


@dataclass
class Fault:
    """Answer `times` requests matching `method` and `path` (a regex) with `status`."""

    method: str
    path: str
    status: int
    times: int = 1
    retry_after: Optional[str] = None
    hits: int = 0
    message: Optional[str] = None  # the Status message; default "injected <status>"

    def matches(self, request: rendering.Request) -> bool:
        return (self.hits < self.times and request.method.value == self.method.upper()
                and re.search(self.path, request.url.path) is not None)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _rv(obj: dict) -> int:
    try:
        return int((obj.get("metadata") or {}).get("resourceVersion") or 0)
    except ValueError:
        return 0


@attrs.define(kw_only=True)
class ClusterEmulator(IndexedEmulator):
    faults: list[Fault] = attrs.field(factory=list, init=False)
    namespaces: set[str] = attrs.field(factory=lambda: {"default", "team-a", "team-b"})
    # A watch that asked for bookmarks gets one after this long without events, as from
    # Kubernetes about once a minute; kopf reconnects a watch that is silent for 70 s.
    bookmark_seconds: float = 60.0
    _counter: int = attrs.field(default=0, init=False)
    cluster_scoped: ClassVar[frozenset[str]] = frozenset(path for path, (_, namespaced, _) in RESOURCES.items()
                                                         if not namespaced)

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        # kmock 0.8 cannot parse /api/v1/namespaces (the resource is named like the
        # path segment); serve the namespaces that hold objects, as kopf needs
        # them to watch by namespace.
        if raw_request.path == "/api/v1/namespaces" and raw_request.method == "GET":
            return await self._serve_namespaces(raw_request)
        return await super().__call__(raw_request)

    async def _serve_namespaces(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        names = sorted(self.namespaces | self._objects.namespaces())
        items = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "resourceVersion": "1"}}
                 for name in names]
        if raw_request.query.get("watch") != "true":
            return aiohttp.web.json_response({"apiVersion": "v1", "kind": "NamespaceList",
                                              "metadata": {"resourceVersion": "1"}, "items": items})
        response = aiohttp.web.StreamResponse()
        await response.prepare(raw_request)
        if raw_request.query.get("resourceVersion") in (None, "", "0"):
            for item in items:
                await response.write(json.dumps({"type": "ADDED", "object": item}).encode() + b"\n")
        while True:  # namespaces never change here; ends when the client goes
            await asyncio.sleep(self.bookmark_seconds)
            if raw_request.query.get("allowWatchBookmarks") == "true":
                await response.write(json.dumps(self._bookmark("v1", "Namespace", "1")).encode() + b"\n")

    def declare_resources(self) -> None:
        for path, (kind, namespaced, status) in RESOURCES.items():
            self.resources[path] = {"kind": kind, "namespaced": namespaced, "verbs": VERBS,
                                    "subresources": ["status"] if status else []}

    def inject(self, method: str, path: str, status: int, times: int = 1, retry_after: Optional[str] = None,
               message: Optional[str] = None) -> Fault:
        fault = Fault(method, path, status, times, retry_after, message=message)
        self.faults.append(fault)
        return fault

    # ---- request log helpers for tests ----

    @property
    def requests(self) -> list[rendering.Request]:
        return list(self._requests)

    def writes(self, since: int = 0) -> list[str]:
        """'METHOD /path' of every write request after index `since`."""
        return [f"{r.method.value} {r.url.path}" for r in self._requests[since:]
                if r.method.value in ("POST", "PUT", "PATCH", "DELETE")]

    def calls(self, since: int = 0) -> list[str]:
        """'METHOD /path' of every non-watch request after index `since`."""
        return [f"{r.method.value} {r.url.path}" for r in self._requests[since:]
                if r.params.get("watch") != "true"]

    def get(self, resource: str, namespace: Optional[str], name: str) -> Optional[dict[str, Any]]:
        key = (kmock.resource(resource), namespace, name)
        if key not in self._objects or self._objects[key].deleted:
            return None
        return copy.deepcopy(self._objects[key].raw)

    # ---- serving ----

    def _next_rv(self) -> str:
        self._counter += 1
        return str(self._counter)

    def _has_status(self, resource: kmock.resource) -> bool:
        info = self.resources[resource] if resource in self.resources else None
        return bool(info and "status" in (info.subresources or ()))

    async def _publish(self, resource: kmock.resource, type_: str, obj: dict) -> None:
        await self._buses[resource].put({"type": type_, "object": copy.deepcopy(obj)})

    async def _handle(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        for fault in self.faults:
            if fault.matches(request):
                fault.hits += 1
                response = await self._render_error(kmock.KubernetesError(
                    status=fault.status, reason="Injected", message=fault.message or f"injected {fault.status}",
                    details={}))
                if fault.retry_after is not None:
                    response.headers["Retry-After"] = fault.retry_after
                return response
        original = request
        try:
            if request.resource is not None and request.name is not None and request.method.value == "PUT":
                async with self._lock:
                    request = await self._update(request, replace=True)
            elif request.resource is not None and request.action == enums.action.CREATE:
                async with self._lock:
                    request = await self._create(request)
            elif request.resource is not None and request.action == enums.action.UPDATE:
                async with self._lock:
                    request = await self._update(request, replace=False)
            elif request.resource is not None and request.action == enums.action.DELETE:
                async with self._lock:
                    request = await self._delete(request)
        except kmock.KubernetesError as err:
            return await self._render_error(err)
        if request is not original:  # kmock's views find requests by identity
            index = original.id
            if index >= len(self._requests) or self._requests[index] is not original:
                index = next(i for i, seen in enumerate(self._requests) if seen is original)
            self._requests[index] = request
        # Skip kmock's own state changes (done above); serve through the fallbacks.
        return await self._dispatch(request)

    async def _create(self, request: rendering.Request) -> rendering.Request:
        data = copy.deepcopy(request.data or {})
        meta = data.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
        key = self._key(request, meta.get("name"))
        if key in self._objects and not self._objects[key].deleted:
            raise kmock.KubernetesError(status=409, reason="AlreadyExists", message=f"{key[2]} already exists")
        if key[1]:
            meta["namespace"] = key[1]
        meta.update(uid=str(uuid.uuid4()), resourceVersion=self._next_rv(), generation=1,
                    creationTimestamp=_now())
        if key in self._objects:
            self._objects[key].create(data)
        else:
            self._objects[key] = data
        await self._publish(request.resource, "ADDED", data)
        return attrs.evolve(request, data=data)

    async def _update(self, request: rendering.Request, *, replace: bool) -> rendering.Request:
        key = self._key(request)
        if key not in self._objects or self._objects[key].deleted:
            raise kmock.KubernetesError(status=404, reason="NotFound", message=f"{key[2]} not found")
        old = copy.deepcopy(self._objects[key].raw)
        change = copy.deepcopy(request.data if request.data is not None else {})
        if isinstance(change, dict):
            wanted_rv = (change.get("metadata") or {}).get("resourceVersion")
            if wanted_rv and str(wanted_rv) != old["metadata"].get("resourceVersion"):
                raise kmock.KubernetesError(status=409, reason="Conflict",
                                            message="the object has been modified; please apply your changes "
                                                    "to the latest version and try again")
        if replace:
            new = change
            new.setdefault("metadata", {})
        else:
            try:
                new = copy.deepcopy(dict(dicts.patch_dict(old, change)))
            except jsonpatch.JsonPatchException as err:  # a failed `test` or a missing path, as the API server
                raise kmock.KubernetesError(status=422, reason="Invalid", message=str(err)) from None
        status_only = request.subresource == "status"
        if status_only:
            new = {**old, "status": new.get("status")} if new.get("status") is not None else \
                {k: v for k, v in old.items() if k != "status"}
        elif self._has_status(request.resource):
            new = {k: v for k, v in new.items() if k != "status"}
            if "status" in old:
                new["status"] = old["status"]
        meta = new["metadata"]
        for field in ("uid", "creationTimestamp", "name", "namespace", "generation", "deletionTimestamp"):
            if field in old["metadata"]:
                meta[field] = old["metadata"][field]
            else:
                meta.pop(field, None)
        if not status_only and {k: v for k, v in new.items() if k not in ("metadata", "status")} != \
                {k: v for k, v in old.items() if k not in ("metadata", "status")}:
            meta["generation"] = int(old["metadata"].get("generation") or 1) + 1
        if new == old:
            return attrs.evolve(request, action=enums.action.UPDATE)  # no-op: no new resourceVersion
        meta["resourceVersion"] = self._next_rv()
        self._objects[key].history.append(new)
        if meta.get("deletionTimestamp") and not meta.get("finalizers"):
            self._objects[key].delete()
            await self._publish(request.resource, "DELETED", new)
        else:
            await self._publish(request.resource, "MODIFIED", new)
        return attrs.evolve(request, action=enums.action.UPDATE)

    async def _delete(self, request: rendering.Request) -> rendering.Request:
        key = self._key(request)
        if key not in self._objects or self._objects[key].deleted:
            raise kmock.KubernetesError(status=404, reason="NotFound", message=f"{key[2]} not found")
        old = copy.deepcopy(self._objects[key].raw)
        wanted_uid = ((request.data or {}).get("preconditions") or {}).get("uid") if isinstance(request.data, dict) else None
        if wanted_uid and wanted_uid != old["metadata"].get("uid"):
            raise kmock.KubernetesError(status=409, reason="Conflict", message="precondition failed: uid")
        if old["metadata"].get("finalizers"):
            if not old["metadata"].get("deletionTimestamp"):
                old["metadata"].update(deletionTimestamp=_now(), resourceVersion=self._next_rv())
                self._objects[key].history.append(old)
                await self._publish(request.resource, "MODIFIED", old)
        else:
            old["metadata"]["resourceVersion"] = self._next_rv()
            self._objects[key].history.append(old)
            self._objects[key].delete()
            await self._publish(request.resource, "DELETED", old)
        return request

    def _matching(self, request: rendering.Request) -> list[dict]:
        return [obj.raw for (_, name, obj) in self._objects.select(request.resource, request.namespace)
                if not obj.deleted and (request.name is None or name == request.name)]

    async def _serve_list(self, request: rendering.Request) -> rendering.Payload:
        if request.resource not in self._get_resources():
            raise kmock.KubernetesResourceNotFoundError()
        async with self._lock:
            items = copy.deepcopy(self._matching(request))
        return {"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": str(self._counter)}, "items": items}

    async def _serve_watch(self, request: rendering.Request) -> AsyncIterator[rendering.Payload]:
        yield b""
        try:
            since = int(request.params.get("resourceVersion") or 0)
        except ValueError:
            since = 0
        bus = self._buses[request.resource]
        mark = await bus.mark()
        try:
            async with self._lock:
                current = copy.deepcopy(self._matching(request))
            seen: dict[tuple, int] = {}
            for obj in current:
                if _rv(obj) > since:
                    seen[(obj["metadata"].get("namespace"), obj["metadata"]["name"])] = _rv(obj)
                    yield {"type": "ADDED" if since == 0 else "MODIFIED", "object": obj}
            events = aiter(bus.stream(since=mark))
            bookmarks = request.params.get("allowWatchBookmarks") == "true"
            while True:
                upcoming = asyncio.ensure_future(anext(events))
                try:
                    while not (await asyncio.wait({upcoming}, timeout=self.bookmark_seconds))[0]:
                        if bookmarks:
                            kind = RESOURCES.get(self._path_of(request.resource), ("",))[0]
                            yield self._bookmark(self._path_of(request.resource).rpartition("/")[0], kind,
                                                 str(self._counter))
                finally:
                    upcoming.cancel()  # only if the client went away meanwhile
                event = upcoming.result()
                meta = event["object"].get("metadata", {})
                if request.namespace is not None and meta.get("namespace") != request.namespace:
                    continue
                if request.name is not None and meta.get("name") != request.name:
                    continue
                key = (meta.get("namespace"), meta.get("name"))
                if _rv(event["object"]) <= max(since, seen.get(key, 0)):
                    continue
                yield event
        finally:
            await bus.unmark(mark)

    @staticmethod
    def _bookmark(api_version: str, kind: str, resource_version: str) -> dict:
        return {"type": "BOOKMARK",
                "object": {"apiVersion": api_version, "kind": kind, "metadata": {"resourceVersion": resource_version}}}
