"""Drives the load: a warm-up, then requests at a fixed concurrency and/or
arrival rate until a request count or a duration is reached."""

from __future__ import annotations

import asyncio
import math
import random
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Optional

import httpx
from tqdm import tqdm

from shardserve.bench.client import Endpoint, read_model_ids, send_request
from shardserve.bench.stats import DEFAULT_PERCENTILES, Metrics, RequestResult, compute_metrics
from shardserve.bench.workload import DEFAULT_TIMEOUT_S, RequestSpec, iter_arrival_offsets


@dataclass(frozen=True)
class LoadConfig:
    """One load level. Concurrency caps requests in flight; rate spaces their
    starts (inf: as soon as a slot is free). At least one must bound the load."""

    concurrency: Optional[int] = 1
    request_rate: float = math.inf
    burstiness: float = 1.0
    num_requests: Optional[int] = 64
    duration_s: Optional[float] = None
    warmup_requests: int = 0
    seed: int = 0
    percentiles: Sequence[float] = DEFAULT_PERCENTILES
    goodput_ms: dict[str, float] = field(default_factory=dict)

    def check(self) -> None:
        if self.concurrency is not None and self.concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if (self.num_requests is None) == (self.duration_s is None):
            raise ValueError("give exactly one of a request count or a duration")
        if self.num_requests is not None and self.num_requests < 1:
            raise ValueError("the request count must be at least 1")
        if self.duration_s is not None and not self.duration_s > 0:
            raise ValueError("the duration must be positive")
        if self.duration_s is not None and self.concurrency is None and math.isinf(self.request_rate):
            raise ValueError("a duration needs a concurrency or a request rate to bound the load")


@dataclass(frozen=True)
class LoadResult:
    config: LoadConfig
    results: list[RequestResult]
    duration_s: float

    def metrics(self) -> Metrics:
        return compute_metrics(self.results, self.duration_s, self.config.percentiles, self.config.goodput_ms or None)


def open_client(concurrency: Optional[int], timeout_s: float = DEFAULT_TIMEOUT_S) -> httpx.AsyncClient:
    """One connection pool for a run; a connection per request in flight."""
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    return httpx.AsyncClient(timeout=httpx.Timeout(timeout_s, connect=30.0), limits=limits)


async def resolve_model(client: httpx.AsyncClient, base_url: str, api_key: Optional[str], model: Optional[str]) -> str:
    """The given model, else the first one the server lists."""
    if model:
        return model
    ids = await read_model_ids(client, base_url, api_key)
    if not ids:
        raise RuntimeError(f"{base_url}/models lists no models; pass --model")
    return ids[0]


async def _run_closed(client: httpx.AsyncClient, endpoint: Endpoint, requests: Iterator[RequestSpec], n: int,
                      concurrency: int) -> None:
    """n requests, `concurrency` at a time; results are dropped (a warm-up)."""
    specs = [next(requests) for _ in range(n)]
    slots = asyncio.Semaphore(concurrency)

    async def one(spec: RequestSpec) -> None:
        async with slots:
            await send_request(client, endpoint, spec)

    await asyncio.gather(*(one(s) for s in specs))


async def run_load(
    client: httpx.AsyncClient,
    endpoint: Endpoint,
    requests: Iterator[RequestSpec],
    config: LoadConfig,
    progress: Optional[bool] = None,
) -> LoadResult:
    """Runs one load level; `progress` None shows a bar only on a terminal."""
    config.check()
    if config.warmup_requests:
        await _run_closed(client, endpoint, requests, config.warmup_requests, config.concurrency or config.warmup_requests)
    slots = asyncio.Semaphore(config.concurrency) if config.concurrency else None
    arrivals = iter_arrival_offsets(config.request_rate, config.burstiness, random.Random(config.seed))
    duration_s = config.duration_s  # None: the request count bounds the run
    bar = tqdm(
        total=math.ceil(duration_s) if duration_s is not None else config.num_requests,
        unit="s" if duration_s is not None else "req", file=sys.stderr, disable=(None if progress is None else not progress),
        desc=f"c={config.concurrency or '-'} rate={config.request_rate:g}", leave=False,
    )
    results: list[RequestResult] = []
    last_done = time.perf_counter()

    async def one(spec: RequestSpec) -> None:
        nonlocal last_done
        try:
            results.append(await send_request(client, endpoint, spec))
        finally:
            last_done = time.perf_counter()
            if slots:
                slots.release()
            if duration_s is not None:
                bar.n = min(math.ceil(duration_s), int(last_done - start))
                bar.set_postfix(done=len(results), refresh=False)
                bar.refresh()
            else:
                bar.update(1)

    tasks: list[asyncio.Task[None]] = []
    start = time.perf_counter()
    try:
        while config.num_requests is None or len(tasks) < config.num_requests:
            offset = next(arrivals)
            if duration_s is not None and offset >= duration_s:
                break
            delay = start + offset - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            if slots:
                await slots.acquire()
            if duration_s is not None and time.perf_counter() - start >= duration_s:
                if slots:
                    slots.release()
                break
            tasks.append(asyncio.create_task(one(next(requests))))
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        bar.close()
    return LoadResult(config=config, results=results, duration_s=max(last_done - start, 1e-9))
