"""How closely tenants' quotas hold under concurrent load across replicas:
two replicas, one tenant with a requests-a-minute limit and two with a
tokens-a-minute limit (one whose prompts cost fewer tokens than estimated,
one whose prompts cost more), each hammered in turn by 16 concurrent
clients for a while.

    python benchmarks/tenant_admission.py [--duration 30]

For each tenant it prints what was admitted against what the limit allows
over the run (a minute's allowance, the burst, plus the refill since the
first request), and so the over-admission: for requests it is the ledger's
own error; for tokens it adds each request's usage beyond the estimate it
was admitted with, settled only when it ends.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

import httpx
import yaml

from shardserve.bench.servers import ServerProcess, build_shardserve_command, free_port, stop_servers_on_sigterm

ROOT = Path(__file__).resolve().parents[1]
KEYS = {"rpm": "sk-rpm", "tpm": "sk-tpm", "dense": "sk-dense"}
RPM, TPM = 60, 3000
CONCURRENCY = 16
MAX_TOKENS = 16
# English text: fewer tokens than bytes / 4, so the estimate is above the usage.
PROMPT = "The river runs through the valley and the town"
# Digits and spaces: more tokens than bytes / 4, so each request runs past its
# estimate until it settles; the worst case for the token quota.
DENSE_PROMPT = " ".join(str(n % 10) for n in range(48))
PROMPTS = {"rpm": PROMPT, "tpm": PROMPT, "dense": DENSE_PROMPT}
RAY_LOGS = "/tmp/ray/session_latest/logs/serve"


def write_spec(directory: Path) -> Path:
    doc = yaml.safe_load((ROOT / "manifests/examples/tiny-cpu.yaml").read_text())
    doc["metadata"]["name"] = "tenant-admission"
    doc["spec"]["replicas"] = 2
    doc["spec"]["tenants"] = {"keys": [{"name": "rpm", "requestsPerMinute": RPM},
                                       {"name": "tpm", "tokensPerMinute": TPM},
                                       {"name": "dense", "tokensPerMinute": TPM}]}
    path = directory / "tenant-admission.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def body(tenant: str) -> dict[str, object]:
    return {"model": "tiny", "prompt": PROMPTS[tenant], "max_tokens": MAX_TOKENS, "ignore_eos": True}


def estimate(tenant: str) -> int:
    """What the replica debits at admission (serve/tenants/admission.py): body bytes / 4 + max_tokens."""
    return len(json.dumps(body(tenant), separators=(",", ":")).encode()) // 4 + MAX_TOKENS


async def hammer(base_url: str, tenant: str, duration_s: float) -> dict[str, float]:
    """CONCURRENCY clients send back to back for `duration_s`; counts what was admitted."""
    admitted, refused, used = 0, 0, 0
    deadline = time.monotonic() + duration_s
    async with httpx.AsyncClient(base_url=base_url, timeout=120,
                                 headers={"Authorization": f"Bearer {KEYS[tenant]}"}) as client:
        async def client_loop() -> None:
            nonlocal admitted, refused, used
            while time.monotonic() < deadline:
                answer = await client.post("/completions", json=body(tenant))
                if answer.status_code == 200:
                    admitted += 1
                    used += answer.json()["usage"]["total_tokens"]
                elif answer.status_code == 429:
                    refused += 1
                    await asyncio.sleep(0.05)
                else:
                    raise RuntimeError(f"{answer.status_code}: {answer.text[:300]}")

        started = time.monotonic()
        await asyncio.gather(*(client_loop() for _ in range(CONCURRENCY)))
        elapsed = time.monotonic() - started
    return {"admitted": admitted, "refused": refused, "used": used, "elapsed": elapsed}


def answers_by_replica(app: str) -> dict[str, dict[str, int]]:
    """200s and 429s each replica logged (Serve's access log lines), from the newest local Ray session."""
    counts: dict[str, dict[str, int]] = {}
    for log in sorted(Path(RAY_LOGS).glob(f"replica_{app}_llm_*.log")):
        text = log.read_text(errors="replace")
        replica = log.stem.rsplit("_", 1)[-1]
        counts[replica] = {"200": text.count("POST /v1/completions 200"), "429": text.count("POST /v1/completions 429")}
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=30.0)
    args = parser.parse_args()

    stop_servers_on_sigterm()
    log_dir = Path(tempfile.mkdtemp(prefix="shardserve-admission-"))
    spec = write_spec(log_dir)
    keys = ",".join(f"{name}={key}" for name, key in KEYS.items())
    port = free_port()
    server = ServerProcess("tenant-admission", build_shardserve_command(spec, port), port,
                           log_dir / "server.log", env={"SHARDSERVE_API_KEYS": keys})
    print(f"tenant admission: 2 replicas, {CONCURRENCY} clients per tenant, {args.duration:g} s each; "
          f"logs in {log_dir}", flush=True)
    with server:
        for tenant, limit in (("rpm", RPM), ("tpm", TPM), ("dense", TPM)):
            got = asyncio.run(hammer(server.base_url, tenant, args.duration))
            # A full bucket at the start, refilled evenly while the run lasts.
            allowed = limit + limit / 60 * got["elapsed"]
            counted = got["admitted"] if tenant == "rpm" else got["used"]
            unit = "requests" if tenant == "rpm" else "tokens"
            per_request = got["used"] / max(1, got["admitted"])
            print(f"{tenant}: limit {limit} {unit}/min over {got['elapsed']:.1f} s allows {allowed:.0f}; "
                  f"admitted {got['admitted']} requests ({got['used']} tokens used, {per_request:.0f} a request "
                  f"against an estimate of {estimate(tenant)}), refused {got['refused']}; "
                  f"over-admission {counted - allowed:+.0f} {unit} ({(counted - allowed) / allowed:+.1%})",
                  flush=True)
        print(f"answers by replica (200s, 429s): {answers_by_replica('tenant-admission')}", flush=True)


if __name__ == "__main__":
    main()
