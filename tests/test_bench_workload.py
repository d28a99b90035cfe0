"""What the benchmark sends and when: seeded prompts, JSONL files, arrival
statistics, and the runner's concurrency, rate and duration limits."""

import asyncio
import itertools
import math
import random
import statistics
import time

import pytest

from shardserve.bench import runner as runner_module
from shardserve.bench.client import Endpoint
from shardserve.bench.runner import LoadConfig, run_load
from shardserve.bench.stats import RequestResult
from shardserve.bench.workload import (
    RequestSpec,
    WorkloadError,
    build_length_range,
    iter_arrival_offsets,
    iter_file_requests,
    iter_random_requests,
    parse_jsonl_requests,
)


def gaps(rate, burstiness, n=20000, seed=3):
    offsets = list(itertools.islice(iter_arrival_offsets(rate, burstiness, random.Random(seed)), n + 1))
    return [b - a for a, b in itertools.pairwise(offsets)]


def test_poisson_arrivals_have_the_rate_and_exponential_gaps():
    g = gaps(rate=5.0, burstiness=1.0)
    mean = statistics.fmean(g)
    assert mean == pytest.approx(0.2, rel=0.03)
    assert statistics.pstdev(g) / mean == pytest.approx(1.0, rel=0.05)  # exponential: CV 1
    # Memorylessness, roughly: P(gap > mean) = e^-1.
    assert sum(x > 0.2 for x in g) / len(g) == pytest.approx(math.exp(-1), abs=0.015)


@pytest.mark.parametrize("burstiness", [0.25, 4.0])
def test_burstiness_changes_the_spread_not_the_rate(burstiness):
    g = gaps(rate=10.0, burstiness=burstiness)
    mean = statistics.fmean(g)
    assert mean == pytest.approx(0.1, rel=0.05)
    assert statistics.pstdev(g) / mean == pytest.approx(1 / math.sqrt(burstiness), rel=0.07)  # gamma: CV 1/sqrt(k)


def test_arrivals_are_seeded_and_an_infinite_rate_sends_at_once():
    first = list(itertools.islice(iter_arrival_offsets(2.0, 1.0, random.Random(1)), 50))
    again = list(itertools.islice(iter_arrival_offsets(2.0, 1.0, random.Random(1)), 50))
    other = list(itertools.islice(iter_arrival_offsets(2.0, 1.0, random.Random(2)), 50))
    assert first == again != other
    assert first[0] == 0.0 and first == sorted(first)
    assert list(itertools.islice(iter_arrival_offsets(math.inf, 1.0, random.Random(1)), 5)) == [0.0] * 5
    for rate, burst in ((0.0, 1.0), (1.0, 0.0)):
        with pytest.raises(WorkloadError):
            next(iter_arrival_offsets(rate, burst, random.Random(1)))


def test_random_prompts_have_drawn_lengths_and_differ():
    specs = list(itertools.islice(iter_random_requests(20, 64, 0.5, random.Random(0)), 300))
    assert build_length_range(20, 0.5) == (10, 30)
    assert all(10 <= len(s.prompt.split()) <= 30 for s in specs)
    assert all(32 <= s.max_tokens <= 96 for s in specs)
    assert len({s.max_tokens for s in specs}) > 20  # really drawn
    assert len({s.prompt for s in specs}) == 300  # no shared prefixes to cache
    fixed = list(itertools.islice(iter_random_requests(8, 16, 0.0, random.Random(0)), 10))
    assert all(len(s.prompt.split()) == 8 and s.max_tokens == 16 for s in fixed)
    again = list(itertools.islice(iter_random_requests(8, 16, 0.0, random.Random(0)), 10))
    assert fixed == again
    with pytest.raises(WorkloadError):
        build_length_range(10, 1.0)


def test_jsonl_prompts_and_messages():
    text = '{"prompt": "hi"}\n\n{"messages": [{"role": "user", "content": "yo"}], "max_tokens": 5}\n'
    specs = parse_jsonl_requests(text, default_max_tokens=32)
    assert specs == [
        RequestSpec(prompt="hi", max_tokens=32),
        RequestSpec(messages=({"role": "user", "content": "yo"},), max_tokens=5),
    ]
    cycled = list(itertools.islice(iter_file_requests(specs, random.Random(0)), 5))
    assert cycled == [specs[0], specs[1], specs[0], specs[1], specs[0]]


@pytest.mark.parametrize("line, problem", [
    ("not json", "prompts:1: not JSON"),
    ('{"prompt": "a", "messages": []}', "exactly one of"),
    ('{"text": "a"}', "exactly one of"),
    ('{"prompt": 3}', "prompt must be a string"),
    ('{"prompt": "a", "max_tokens": 0}', "max_tokens must be a positive integer"),
    ('{"messages": []}', "non-empty list"),
])
def test_jsonl_problems_name_the_line(line, problem):
    with pytest.raises(WorkloadError, match=problem):
        parse_jsonl_requests(line, 16)


def test_an_empty_prompt_file_is_refused():
    with pytest.raises(WorkloadError, match="no requests"):
        parse_jsonl_requests("\n", 16)


class FakeServer:
    """Stands in for send_request: each request takes `service_s`; records concurrency."""

    def __init__(self, service_s: float):
        self.service_s = service_s
        self.in_flight = self.peak = 0
        self.starts: list[float] = []

    async def send(self, _client, _endpoint, spec):
        self.starts.append(time.perf_counter())
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        started = time.perf_counter()
        await asyncio.sleep(self.service_s)
        self.in_flight -= 1
        return RequestResult(success=True, start_time=started, ttft=self.service_s / 2,
                             latency=self.service_s, output_tokens=spec.max_tokens, tokens_from_usage=True)


def run_with(fake, monkeypatch, config):
    monkeypatch.setattr(runner_module, "send_request", fake.send)
    requests = iter_random_requests(4, 8, 0.0, random.Random(0))
    endpoint = Endpoint(base_url="http://unused/v1", model="m")
    return asyncio.run(run_load(None, endpoint, requests, config, progress=False))


def test_fixed_concurrency_is_never_exceeded_and_counts_are_exact(monkeypatch):
    fake = FakeServer(service_s=0.02)
    load = run_with(fake, monkeypatch, LoadConfig(concurrency=3, num_requests=20, warmup_requests=4))
    assert len(fake.starts) == 24  # warm-up requests are sent ...
    assert len(load.results) == 20  # ... but not measured
    assert fake.peak == 3
    m = load.metrics()
    assert m.completed == 20 and m.total_output_tokens == 160
    # 20 requests, 3 at a time, 20 ms each: 7 waves.
    assert 0.13 <= load.duration_s < 0.4


def test_duration_bounds_a_closed_loop(monkeypatch):
    fake = FakeServer(service_s=0.05)
    load = run_with(fake, monkeypatch, LoadConfig(concurrency=2, num_requests=None, duration_s=0.5))
    # Two slots of 50 ms for 0.5 s: about 20 requests; the last ones finish after the limit.
    assert 14 <= len(load.results) <= 22
    assert 0.5 <= load.duration_s < 0.7


def test_request_rate_spaces_the_starts(monkeypatch):
    fake = FakeServer(service_s=0.01)
    load = run_with(fake, monkeypatch, LoadConfig(concurrency=None, request_rate=50.0, burstiness=1e9,
                                                  num_requests=15, seed=4))
    starts = fake.starts
    spacing = [b - a for a, b in itertools.pairwise(starts)]
    assert statistics.fmean(spacing) == pytest.approx(0.02, rel=0.25)  # even gaps at 50/s
    assert len(load.results) == 15


def test_a_duration_needs_a_bound():
    with pytest.raises(ValueError, match="bound"):
        LoadConfig(concurrency=None, num_requests=None, duration_s=5).check()
    with pytest.raises(ValueError, match="exactly one"):
        LoadConfig(num_requests=5, duration_s=5).check()
