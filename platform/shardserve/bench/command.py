"""`shardserve bench`: its arguments and what each mode runs."""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from shardserve.bench.stats import parse_goodput
from shardserve.bench.workload import (
    DEFAULT_TIMEOUT_S,
    RequestSpec,
    WorkloadError,
    iter_file_requests,
    iter_random_requests,
    read_jsonl_requests,
)

# The HTTP client (httpx, tqdm) loads only when a benchmark runs: building the
# CLI's parser must not need it (the operator's image does not install it).
if TYPE_CHECKING:
    from shardserve.bench.client import Endpoint
    from shardserve.bench.runner import LoadResult

API_KEY_ENV = "OPENAI_API_KEY"


def _percentiles(text: str) -> list[float]:
    try:
        values = [float(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of numbers: {text!r}") from None
    if not values or not all(0 <= p <= 100 for p in values):
        raise argparse.ArgumentTypeError("percentiles must be within 0-100")
    return values


def _env_pair(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name, value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    target = parser.add_argument_group("target")
    target.add_argument("--base-url", default="http://127.0.0.1:8000/v1", help="OpenAI-compatible base URL (…/v1)")
    target.add_argument("--model", help="model name to send (default: the first one /v1/models lists)")
    target.add_argument("--endpoint", choices=("completions", "chat"), default="completions",
                        help="/v1/completions or /v1/chat/completions (default completions)")
    target.add_argument("--api-key", default=os.environ.get(API_KEY_ENV),
                        help=f"sent as 'Authorization: Bearer KEY' (default ${API_KEY_ENV})")
    target.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="seconds per request")

    load = parser.add_argument_group("load")
    load.add_argument("--concurrency", type=int, nargs="+", metavar="N",
                      help="requests in flight; several values run one after another "
                           "(default 1, or unbounded with --request-rate; --compare: 1 16)")
    load.add_argument("--request-rate", type=float, default=math.inf,
                      help="requests per second, arriving as a Poisson process (default: as fast as slots free up)")
    load.add_argument("--burstiness", type=float, default=1.0,
                      help="gamma shape of the arrival gaps: 1 Poisson, <1 burstier, >1 more even")
    stop = load.add_mutually_exclusive_group()
    stop.add_argument("--num-requests", type=int, help="requests per level (default 64)")
    stop.add_argument("--duration", type=float, help="seconds per level to keep sending (in-flight requests finish)")
    load.add_argument("--warmup", type=int, help="unmeasured requests before each level (default: 2 x concurrency)")
    load.add_argument("--seed", type=int, default=0)

    work = parser.add_argument_group("workload")
    work.add_argument("--prompts", type=Path, metavar="FILE.jsonl",
                      help='one {"prompt": ...} or {"messages": [...]} per line, optional "max_tokens"; cycled')
    work.add_argument("--shuffle", action="store_true", help="shuffle --prompts on each pass")
    work.add_argument("--input-len", type=int, default=32, help="random prompts: words per prompt (default 32)")
    work.add_argument("--output-len", type=int, default=64, help="max_tokens per request (default 64)")
    work.add_argument("--range-ratio", type=float, default=0.0,
                      help="draw lengths uniformly from len x [1-r, 1+r] (default 0: fixed)")
    work.add_argument("--ignore-eos", action="store_true",
                      help="ask the server to always generate max_tokens (a vLLM extension; --compare sets it)")

    out = parser.add_argument_group("report")
    out.add_argument("--percentiles", type=_percentiles, default=[50.0, 90.0, 99.0], metavar="P,P,…",
                     help="latency percentiles to report (default 50,90,99)")
    out.add_argument("--goodput", nargs="+", default=[], metavar="METRIC:MS",
                     help="latency targets for goodput, e.g. ttft:200 tpot:50 e2el:5000")
    out.add_argument("--json", metavar="FILE", help="also write the results as JSON to FILE ('-': stdout, no table)")
    out.add_argument("--no-progress", action="store_true", help="no progress bar")

    compare = parser.add_argument_group("comparison (bare vLLM against shardserve run)")
    compare.add_argument("--compare", type=Path, metavar="FILE",
                         help="start bare vLLM and `shardserve run FILE` in turn and compare them "
                              "(default load: --duration 25 at --concurrency 1 16)")
    compare.add_argument("--rounds", type=int, default=3, help="alternating rounds (default 3)")
    compare.add_argument("--shardserve-env", type=_env_pair, action="append", default=[], metavar="NAME=VALUE",
                         help="extra environment for `shardserve run` (repeatable), e.g. a Ray switch to try")
    compare.add_argument("--log-dir", type=Path, help="where the servers' logs go (default: a new temporary directory)")


def _write_json(target: Optional[str], data: dict[str, Any]) -> None:
    if not target:
        return
    text = json.dumps(data, indent=2, default=str) + "\n"
    if target == "-":
        sys.stdout.write(text)
    else:
        Path(target).write_text(text)


def _requests(args: argparse.Namespace) -> Iterator[RequestSpec]:
    rng = random.Random(args.seed)
    if args.prompts:
        return iter_file_requests(read_jsonl_requests(args.prompts, args.output_len), rng, shuffle=args.shuffle)
    return iter_random_requests(args.input_len, args.output_len, args.range_ratio, rng)


async def _run_levels(args: argparse.Namespace, goodput: dict[str, float]) -> tuple[Endpoint, list[LoadResult]]:
    from shardserve.bench.client import Endpoint
    from shardserve.bench.runner import LoadConfig, open_client, resolve_model, run_load

    levels = args.concurrency or ([None] if args.request_rate != math.inf else [1])
    loads = []
    async with open_client(max((c for c in levels if c), default=None), args.timeout) as probe:
        model = await resolve_model(probe, args.base_url, args.api_key, args.model)
    endpoint = Endpoint(base_url=args.base_url, model=model, api=args.endpoint, api_key=args.api_key,
                        ignore_eos=args.ignore_eos)
    for c in levels:
        config = LoadConfig(
            concurrency=c, request_rate=args.request_rate, burstiness=args.burstiness,
            num_requests=None if args.duration else (args.num_requests or 64), duration_s=args.duration,
            warmup_requests=args.warmup if args.warmup is not None else 2 * (c or 1),
            seed=args.seed, percentiles=args.percentiles, goodput_ms=goodput,
        )
        config.check()
        async with open_client(c, args.timeout) as client:
            loads.append(await run_load(client, endpoint, _requests(args), config,
                                        progress=False if args.no_progress else None))
    return endpoint, loads


def _run_compare(args: argparse.Namespace) -> int:
    from shardserve.api.validation import SpecError, load_file
    from shardserve.bench.compare import CompareConfig, format_summary, run_compare
    from shardserve.bench.servers import stop_servers_on_sigterm

    try:
        md = load_file(str(args.compare))
    except SpecError as err:
        print(f"shardserve: {err}", file=sys.stderr)
        return 2
    if args.rounds < 1:
        print("shardserve: --rounds must be at least 1", file=sys.stderr)
        return 2
    config = CompareConfig(
        spec_file=args.compare, rounds=args.rounds, concurrencies=tuple(args.concurrency or (1, 16)),
        duration_s=args.duration or 25.0, input_len=args.input_len, output_len=args.output_len,
        api=args.endpoint, warmup_requests=args.warmup, seed=args.seed,
        shardserve_env=dict(args.shardserve_env), log_dir=args.log_dir,
    )
    stop_servers_on_sigterm()
    result = run_compare(md, config)
    _write_json(args.json, result)
    if args.json != "-":
        print(format_summary(result["summary"], config.rounds))
    return 0


def run_from_args(args: argparse.Namespace) -> int:
    try:
        goodput = parse_goodput(args.goodput)
        if args.compare:
            return _run_compare(args)
        endpoint, loads = asyncio.run(_run_levels(args, goodput))
    except (ValueError, WorkloadError, OSError) as err:
        print(f"shardserve: bench: {err}", file=sys.stderr)
        return 2
    except Exception as err:  # the endpoint could not be reached or listed no model
        print(f"shardserve: bench: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    from shardserve.bench.report import build_report, format_report

    report = build_report(endpoint, loads)
    _write_json(args.json, report)
    if args.json != "-":
        sys.stdout.write(format_report(report))
    # Failures are results (e.g. 429s past a queue limit); a level with no answer at all is not.
    return 1 if any(level["metrics"]["completed"] == 0 for level in report["levels"]) else 0
