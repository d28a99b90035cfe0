"""kmock's Kubernetes emulator, served in time that does not grow with the test.

kmock 0.8 scans every stored object to serve one, and on every request
re-filters every request served so far to pick its reaction. Here objects
are indexed by resource, namespace and name, and a reaction's filters see
only the request at hand. The API semantics are cluster_emulator's.
"""

from __future__ import annotations

from typing import Any, ClassVar, Optional

import aiohttp.web
import attrs
import kmock
from kmock._internal import rendering


@attrs.frozen(eq=False, order=False)
class IndexedObjects(kmock.ObjectsArray):
    """kmock's store of objects (soft-deleted ones included), also indexed by resource and namespace."""

    # resource -> namespace (None: cluster-scoped) -> name -> object
    _index: dict[kmock.resource, dict[Optional[str], dict[str, kmock.Object]]] = attrs.field(factory=dict, init=False)

    def __setitem__(self, key: Any, value: Any, /) -> None:
        super().__setitem__(key, value)
        if len(key) == 3:
            resource = kmock.resource(key[0])
            spaces = self._index.setdefault(resource, {})
            spaces.setdefault(key[1], {})[key[2]] = self._objects[resource, key[1], key[2]]

    def __delitem__(self, key: Any, /) -> None:
        super().__delitem__(key)
        if len(key) == 3:
            self._index.get(kmock.resource(key[0]), {}).get(key[1], {}).pop(key[2], None)

    def clear(self) -> None:
        super().clear()
        self._index.clear()

    def select(self, resource: kmock.resource,
               namespace: Optional[str] = None) -> list[tuple[Optional[str], str, kmock.Object]]:
        """(namespace, name, object) of one resource, in one namespace or in all."""
        spaces = self._index.get(resource, {})
        chosen = [namespace] if namespace is not None else list(spaces)
        return [(ns, name, obj) for ns in chosen for name, obj in spaces.get(ns, {}).items()]

    def kinds(self) -> set[kmock.resource]:
        return {resource for resource, spaces in self._index.items() if any(spaces.values())}

    def namespaces(self) -> set[str]:
        return {ns for spaces in self._index.values() for ns, names in spaces.items() if ns and names}



@attrs.define(kw_only=True)
class IndexedEmulator(kmock.KubernetesEmulator):
    _objects: IndexedObjects = attrs.field(factory=IndexedObjects, init=False)
    _order: tuple[list, list] = attrs.field(factory=lambda: ([], []), init=False)  # payloads, in serving order
    # Resources by path ("group/version/plural") that are not namespaced.
    cluster_scoped: ClassVar[frozenset[str]] = frozenset()

    async def _dispatch(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        """apps.RawHandler._handle, deciding which reactions see the request from this request alone.

        kmock asks `request in reaction._source`, which filters every request
        served so far, for each reaction, on every request. For a chain of
        filters and priorities from this handler (all of ours), the answer
        is the chain's criteria applied to this one request.
        """
        for payload in self._ordered_payloads():
            if payload._disabled.is_set():
                continue
            seen = self._sees(payload._source, request)
            if seen if seen is not None else request in payload._source:
                try:
                    return await payload(request)
                except rendering.ReactionMismatchError:
                    payload._disabled.set()
                except NotImplementedError:
                    pass
        raise NotImplementedError("no reaction matches the request")

    def _ordered_payloads(self) -> list:
        """self._payloads by priority, as RawHandler._handle orders them; recomputed when they change."""
        known, ordered = self._order
        if len(known) != len(self._payloads) or any(a is not b for a, b in zip(known, self._payloads, strict=True)):
            priorities = [tuple(-p for p in payload.priorities) for payload in self._payloads]
            width = max((len(priority) for priority in priorities), default=0)
            order = sorted(range(len(priorities)), key=lambda i: priorities[i] + (0,) * (width - len(priorities[i])))
            self._order = known, ordered = list(self._payloads), [self._payloads[i] for i in order]
        return ordered

    async def _render_error(self, exc: Exception) -> aiohttp.web.StreamResponse:
        # kmock puts a formatted traceback (milliseconds each) in a Status without details.
        if isinstance(exc, kmock.KubernetesError) and not exc.details:
            return aiohttp.web.json_response({
                "apiVersion": "v1", "kind": "Status", "metadata": {}, "code": exc.status, "status": "Failure",
                "reason": exc.reason or type(exc).__name__, "message": exc.message or repr(exc)}, status=exc.status)
        return await super()._render_error(exc)

    def _sees(self, view: kmock.View, request: rendering.Request) -> Optional[bool]:
        """Whether the view holds the request, if its chain is one of filters and priorities; else None."""
        while view is not self:
            if type(view) is kmock.Filter:
                if not view.criteria(request):
                    return False
            elif type(view) is not kmock.Priority:
                return None
            view = view._source
        return True

    def _key(self, request: rendering.Request, name: Optional[str] = None) -> tuple:
        namespaced = self._path_of(request.resource) not in self.cluster_scoped
        return (request.resource, request.namespace if namespaced else None, name or request.name)

    @staticmethod
    def _path_of(resource: kmock.resource) -> str:
        group = f"{resource.group}/" if resource.group else ""
        return f"{group}{resource.version}/{resource.plural}"

    # kmock serves one object by scanning all of them; these look it up by key.

    def _stored(self, request: rendering.Request, name: Optional[str] = None) -> Optional[kmock.Object]:
        key = self._key(request, name)
        return self._objects[key] if key in self._objects else None

    async def _serve_fetch(self, request: rendering.Request) -> rendering.Payload:
        obj = self._stored(request)
        if obj is None or obj.deleted:
            raise kmock.KubernetesObjectNotFoundError()
        return obj.raw

    async def _serve_create(self, request: rendering.Request) -> rendering.Payload:
        return self._stored(request, ((request.data or {}).get("metadata") or {}).get("name")).raw

    async def _serve_update(self, request: rendering.Request) -> rendering.Payload:
        return self._stored(request).last.raw

    async def _serve_delete(self, request: rendering.Request) -> rendering.Payload:
        return self._stored(request).last.raw

    def _get_resources(self) -> list[kmock.resource]:
        # kmock adds the resource of every stored object, scanning them all.
        return list(set(kmock.KubernetesScaffold._get_resources(self)) | self._objects.kinds())
