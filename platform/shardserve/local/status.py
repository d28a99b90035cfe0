"""`shardserve status`: replicas, queue, LoRA adapters and tenants near their
limits, of deployments on the local Ray that `shardserve run` started."""

from __future__ import annotations

import dataclasses
import json
import logging
from typing import Any, Optional

import ray

from shardserve.api.contract import KV_NAMESPACE, LLM_DEPLOYMENT, cold_start_key, decision_key
from shardserve.serve.adapter_registry import read_adapters
from shardserve.serve.ray_private import kv_get, serve_details
from shardserve.serve.telemetry.cold_start import format_phases
from shardserve.serve.tenants.ledger import TenantUsage
from shardserve.serve.tenants.quota_actor import read_usage


def read_local_status(app_filter: Optional[str] = None) -> list[dict[str, Any]]:
    """Connects to the running local Ray and reads each application's state."""
    ray.init(address="auto", log_to_driver=False, logging_level=logging.ERROR)
    try:
        details = serve_details()
        out = []
        for app_name, app in sorted(details.get("applications", {}).items()):
            if app_filter and app_name != app_filter:
                continue
            llm = app.get("deployments", {}).get(LLM_DEPLOYMENT, {})
            raw = kv_get(decision_key(app_name, LLM_DEPLOYMENT), KV_NAMESPACE)
            started = kv_get(cold_start_key(app_name, LLM_DEPLOYMENT), KV_NAMESPACE)
            out.append(build_status_row(app_name, app, llm, json.loads(raw) if raw else None,
                                        json.loads(started) if started else None,
                                        read_adapters(app_name, LLM_DEPLOYMENT), read_usage(app_name)))
        return out
    finally:
        ray.shutdown()


def build_status_row(app_name: str, app: dict[str, Any], llm: dict[str, Any],
                     decision: Optional[dict[str, Any]], cold_start: Optional[dict[str, Any]] = None,
                     adapters: Optional[dict[str, list[str]]] = None,
                     tenants: Optional[list[TenantUsage]] = None) -> dict[str, Any]:
    replicas = llm.get("replicas", [])
    running = {r.get("replica_id") for r in replicas if str(r.get("state", "")).endswith("RUNNING")}
    return {
        "name": app_name,
        "status": str(app.get("status", "")),
        "replicas_running": sum(1 for r in replicas if str(r.get("state", "")).endswith("RUNNING")),
        "replicas_desired": llm.get("target_num_replicas", 0),
        "queue_waiting": decision.get("waiting") if decision else None,
        "requests_running": decision.get("running") if decision else None,
        "last_decision": decision.get("reason") if decision else None,
        "last_cold_start": cold_start.get("phases") if cold_start else None,
        # Replicas that stopped leave their last record behind: only running ones count.
        "adapters": {replica: held for replica, held in sorted((adapters or {}).items()) if replica in running},
        # Every tenant the ledger has seen (None: no tenants, or no request yet).
        "tenants": None if tenants is None else [dataclasses.asdict(t) for t in tenants],
    }


def format_status(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "no deployments"
    lines = []
    for row in rows:
        queue = ("queue n/a (autoscaling off)" if row["queue_waiting"] is None
                 else f"queue {row['queue_waiting']:g} waiting, {row['requests_running']:g} running")
        lines.append(f"{row['name']}: {row['status']}, replicas {row['replicas_running']}/{row['replicas_desired']} "
                     f"running/desired, {queue}")
        if row["last_decision"]:
            lines.append(f"  autoscaler: {row['last_decision']}")
        if row.get("last_cold_start"):
            lines.append(f"  last replica start: {format_phases(row['last_cold_start'])}")
        for replica, held in (row.get("adapters") or {}).items():
            lines.append(f"  replica {replica} holds adapters: {', '.join(held) or 'none'}")
        if row.get("tenants") is not None:
            near = [t for t in row["tenants"] if t["near_limit"]]
            lines.append(f"  tenants: {len(row['tenants'])} seen, {len(near) or 'none'} near their limits")
            lines.extend(f"  tenant {format_tenant(t)}" for t in near)
    return "\n".join(lines)


def format_tenant(usage: dict[str, Any]) -> str:
    """`alice: requests 0/6 left, tokens 412/600 left, 2/2 in flight, refused 4 (requests 3, tokens 1)`."""
    parts = [f"{kind} {usage[f'{kind}_left']}/{usage[f'{kind}_limit']} left"
             for kind in ("requests", "tokens") if usage[f"{kind}_limit"] is not None]
    if usage["max_in_flight"] is not None:
        parts.append(f"{usage['in_flight']}/{usage['max_in_flight']} in flight")
    refused = usage["refused"]
    if refused:
        reasons = ", ".join(f"{reason} {n}" for reason, n in sorted(refused.items()))
        parts.append(f"refused {sum(refused.values())} ({reasons})")
    return f"{usage['tenant']}: {', '.join(parts) or 'no limits'}"
