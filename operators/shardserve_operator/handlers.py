"""kopf registration: thin handlers that hand every trigger to the controller's work queue.

Two kinds of triggers lead to the same level-based reconcile:

- the ModelDeployment itself (created, spec/labels changed, found at start):
  kopf's change handlers, retried by kopf on TemporaryError with the
  controller's delay;
- its children (a RayService's status, or any child edited or deleted):
  watch events, mapped to the owner by its controller reference (the
  controller drops those that only echo its own writes);
- the RayClusters KubeRay runs for its RayService (worker bounds and pod
  counts): KubeRay copies the RayService's labels onto them, so they are
  watched by the same label and mapped to the ModelDeployment by its
  shardserve.dev/model-deployment label (their controller is the RayService).
"""

from __future__ import annotations

from typing import Any, Optional

import kopf

from shardserve_operator import naming
from shardserve_operator.controller import Controller
from shardserve_operator.kinds import MODEL_DEPLOYMENT, WATCHED_KINDS, Kind


def register(registry: kopf.OperatorRegistry, controller: Controller) -> None:
    md: dict[str, Any] = dict(group=MODEL_DEPLOYMENT.group, version=MODEL_DEPLOYMENT.version, plural=MODEL_DEPLOYMENT.plural)

    @kopf.on.resume(**md, registry=registry, id="reconcile")
    @kopf.on.create(**md, registry=registry, id="reconcile")
    @kopf.on.update(**md, registry=registry, id="reconcile")
    async def model_deployment_changed(body: kopf.Body, **_: Any) -> None:
        await controller.reconcile_body(body)

    # Deletion needs no handler (owner references let the garbage collector
    # remove the children) and so no finalizer; only the memory is dropped.
    # Every other event (the initial listing too) keeps the metrics' view current.
    @kopf.on.event(**md, registry=registry, id="forget")
    async def model_deployment_event(body: kopf.Body, type: Optional[str], **_: Any) -> None:
        if type == "DELETED":
            controller.forget(body["metadata"]["namespace"], body["metadata"]["name"])
        else:
            controller.watch(body)

    for child_kind in WATCHED_KINDS:
        _register_child(registry, controller, child_kind)


def _register_child(registry: kopf.OperatorRegistry, controller: Controller, kind: Kind) -> None:
    @kopf.on.event(kind.group, kind.version, kind.plural, registry=registry, id=f"child-{kind.plural}",
                   labels={naming.LABEL_MANAGED_BY: naming.MANAGER})
    async def child_changed(body: kopf.Body, type: Optional[str], **_: Any) -> None:
        await controller.on_child_event(kind, body, type)
