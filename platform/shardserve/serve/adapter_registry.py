"""Which LoRA adapters each model replica holds, in Ray's key-value store:
replicas publish theirs on every load and eviction, and read the others'
to route a request for an adapter they do not hold; `shardserve status`
reads them all."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable

from shardserve.api.contract import KV_NAMESPACE, adapters_key
from shardserve.serve.ray_private import kv_get, kv_keys, kv_put


def publish_adapters(app: str, deployment: str, replica: str, held: Iterable[str]) -> None:
    record = {"adapters": sorted(held), "time": time.time()}
    kv_put(adapters_key(app, deployment, replica), json.dumps(record), KV_NAMESPACE)


def read_adapters(app: str, deployment: str, skip_replica: str = "") -> dict[str, list[str]]:
    """The adapters each replica of the deployment last published, by replica
    id (a replica that stopped leaves its last record). Blocking."""
    prefix = adapters_key(app, deployment)
    held = {}
    for key in kv_keys(prefix, KV_NAMESPACE):
        replica = key.removeprefix(prefix)
        raw = kv_get(key, KV_NAMESPACE) if replica != skip_replica else None
        if raw:
            held[replica] = list(json.loads(raw).get("adapters", []))
    return held
