"""Quick load check with the official openai client: streamed completions at a
fixed concurrency; prints generated tokens/s and time-to-first-token.

    python benchmarks/quick_load.py --base-url http://127.0.0.1:8000/v1 --concurrency 16
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import openai


async def one_request(client: openai.AsyncOpenAI, model: str, prompt: str, max_tokens: int) -> tuple[float, int]:
    started = time.perf_counter()
    first = None
    tokens = 0
    stream = await client.completions.create(
        model=model, prompt=prompt, max_tokens=max_tokens, temperature=0, stream=True,
        stream_options={"include_usage": True}, extra_body={"ignore_eos": True},
    )
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].text and first is None:
            first = time.perf_counter() - started
        if chunk.usage:
            tokens = chunk.usage.completion_tokens
    return first or 0.0, tokens


async def run(base_url: str, model: str, concurrency: int, requests: int, max_tokens: int) -> dict:
    client = openai.AsyncOpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=300)
    queue = list(range(requests))
    results: list[tuple[float, int]] = []

    async def worker() -> None:
        while queue:
            i = queue.pop()
            results.append(await one_request(client, model, f"Request {i}: tell me a story", max_tokens))

    await one_request(client, model, "warm up", 4)
    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    ttfts = sorted(r[0] for r in results)
    return {
        "concurrency": concurrency,
        "requests": len(results),
        "generated_tokens_per_s": sum(r[1] for r in results) / elapsed,
        "ttft_p50_ms": 1000 * statistics.median(ttfts),
        "ttft_p90_ms": 1000 * ttfts[int(0.9 * (len(ttfts) - 1))],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--base-url", default="http://127.0.0.1:8000/v1")
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=64)
    args = parser.parse_args()
    for c in args.concurrency:
        r = asyncio.run(run(args.base_url, args.model, c, max(args.requests, c), args.max_tokens))
        print(f"concurrency {r['concurrency']:3d}: {r['generated_tokens_per_s']:8.1f} generated tokens/s, "
              f"TTFT p50 {r['ttft_p50_ms']:.1f} ms p90 {r['ttft_p90_ms']:.1f} ms ({r['requests']} requests)")


if __name__ == "__main__":
    main()
