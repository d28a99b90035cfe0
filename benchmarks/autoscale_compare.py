"""Time from a queue forming to a second replica serving: shardserve's
queue-depth policy beside Ray Serve's request-based policy, same load, same run.

    python benchmarks/autoscale_compare.py [--clients 12] [--rounds 1]

Each variant: a fresh local Ray, the tiny model with maxNumSeqs 2 (so a burst
queues in the engine), minReplicas 1, maxReplicas 2, upscale delay 2 s; then
closed-loop streaming clients until the second replica is RUNNING.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import statistics
import threading
import time
from pathlib import Path

import openai
import yaml

ROOT = Path(__file__).resolve().parents[1]


def deployment(port: int):
    from shardserve.api.validation import parse_deployment

    doc = yaml.safe_load((ROOT / "manifests/examples/tiny-cpu.yaml").read_text())
    doc["metadata"]["name"] = "compare"
    doc["spec"]["engine"]["maxNumSeqs"] = 2
    doc["spec"].pop("replicas")
    doc["spec"]["autoscaling"] = {"minReplicas": 1, "maxReplicas": 2, "targetQueueDepth": 2,
                                  "upscaleDelaySeconds": 2, "downscaleDelaySeconds": 600}
    doc["spec"]["serving"] = {"maxOngoingRequests": 16, "maxQueuedRequests": 256, "port": port}
    return parse_deployment(doc)


def request_policy(config: dict) -> dict:
    """Ray Serve's default policy (ongoing requests per replica), same bounds and delays."""
    config = copy.deepcopy(config)
    config["deployment_config"]["autoscaling_config"] = {
        "min_replicas": 1, "initial_replicas": 1, "max_replicas": 2,
        "target_ongoing_requests": 4,  # 12 clients / 4 -> wants 3, capped at 2
        "upscale_delay_s": 2, "downscale_delay_s": 600,
        "metrics_interval_s": 1.0, "look_back_period_s": 5.0,
    }
    return config


def replicas_running(name: str) -> int:
    from ray import serve

    app = serve.status().applications.get(name)
    if not app or "llm" not in app.deployments:
        return 0
    return app.deployments["llm"].replica_states.get("RUNNING", 0)


def load(base_url: str, clients: int, stop: threading.Event, first_queued: list) -> None:
    async def run():
        client = openai.AsyncOpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=600)

        async def loop(i):
            while not stop.is_set():
                stream = await client.completions.create(model="tiny", prompt=f"c{i}", max_tokens=48, stream=True,
                                                         extra_body={"ignore_eos": True})
                async for _ in stream:
                    pass

        first_queued.append(time.monotonic())  # more clients than engine slots from here on
        await asyncio.gather(*(loop(i) for i in range(clients)))

    asyncio.run(run())


def measure(variant: str, clients: int, port: int) -> float:
    import ray
    from ray import serve

    from shardserve.serve.app import build_application, build_llm_config_for

    md = deployment(port)
    config = build_llm_config_for(md)
    if variant == "ray-serve-requests":
        config = request_policy(config)
    ray.init(num_cpus=12, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_application(md, config), name="compare", route_prefix="/")
        stop, started = threading.Event(), []
        worker = threading.Thread(target=load, args=(f"http://127.0.0.1:{port}/v1", clients, stop, started))
        worker.start()
        while not started:
            time.sleep(0.1)
        while replicas_running("compare") < 2:
            if time.monotonic() - started[0] > 900:
                raise RuntimeError("no second replica after 900 s")
            time.sleep(0.5)
        elapsed = time.monotonic() - started[0]
        stop.set()
        worker.join()
        return elapsed
    finally:
        serve.shutdown()
        ray.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--port", type=int, default=8010)
    args = parser.parse_args()
    results: dict[str, list[float]] = {"shardserve-queue-depth": [], "ray-serve-requests": []}
    for _ in range(args.rounds):
        for variant in results:  # alternate, so drift hits both alike
            results[variant].append(measure(variant, args.clients, args.port))
            print(f"{variant}: second replica serving {results[variant][-1]:.1f} s after the load began", flush=True)
    for variant, times in results.items():
        print(f"{variant}: median {statistics.median(times):.1f} s over {len(times)} round(s)")


if __name__ == "__main__":
    main()
