"""Traces, metrics and cold-start phases on the real stack.

The small-queue stack (which test_backpressure shares) has tracing on
(spec.telemetry.tracing): every Ray process exports its spans to an OTLP
receiver in this test process; its Prometheus endpoint (Ray's metrics agent)
is scraped after known traffic. Its small queue (2 running, 2 queued) makes a
burst produce 429s too.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import threading
import time
from collections.abc import Callable
from typing import Optional

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.conftest import SMALL_QUEUE, SmallQueue
from tests.integration.observability_doc import documented_metrics
from tests.integration.otlp_receiver import OtlpReceiver, ReceivedSpan
from tests.integration.polling import poll
from tests.integration.stack import LocalStack, shardserve_command

pytestmark = [pytest.mark.integration, pytest.mark.stacks(SMALL_QUEUE)]

MODEL = "tiny"
SPAN_WAIT_S = 60.0
METRICS_WAIT_S = 90.0


@pytest.fixture(scope="module")
def stack(small_queue: SmallQueue) -> LocalStack:
    return small_queue.stack


@pytest.fixture(scope="module")
def receiver(small_queue: SmallQueue) -> OtlpReceiver:
    return small_queue.receiver


@pytest.fixture(scope="module")
def metrics_url(small_queue: SmallQueue) -> str:
    return small_queue.metrics_url


# ------------------------------------------------------------------ span helpers

def by_id(spans: list[ReceivedSpan]) -> dict[str, ReceivedSpan]:
    return {s.span_id: s for s in spans}


def ancestors(span: ReceivedSpan, spans: list[ReceivedSpan]) -> list[ReceivedSpan]:
    index, out = by_id(spans), []
    while span.parent_id in index:
        span = index[span.parent_id]
        out.append(span)
    return out


def children(span: ReceivedSpan, spans: list[ReceivedSpan]) -> list[ReceivedSpan]:
    return [s for s in spans if s.parent_id == span.span_id]


def request_tree(receiver: OtlpReceiver, is_replica: Callable[[ReceivedSpan], bool]):
    """(ingress, replica, engine, the whole trace) for the request whose replica span matches."""

    def complete(spans: list[ReceivedSpan]) -> bool:
        replicas = [s for s in spans if s.name.startswith("replica ") and is_replica(s)]
        if not replicas:
            return False
        trace = [s for s in spans if s.trace_id == replicas[0].trace_id]
        has_engine = any(s.name == "llm_request" and s.parent_id == replicas[0].span_id for s in trace)
        above = ancestors(replicas[0], trace)
        has_ingress = any(s.name.startswith(("chat ", "text_completion ")) for s in above)
        # Serve's own span ends after the response, so it can come in a later export batch.
        has_serve = any(s.name.startswith("replica_handle_request") for s in above)
        return has_engine and has_ingress and has_serve

    spans = receiver.wait_for(complete, SPAN_WAIT_S)
    assert complete(spans), f"request spans did not arrive: {sorted({s.name for s in spans})}"
    (replica,) = [s for s in spans if s.name.startswith("replica ") and is_replica(s)]
    trace = [s for s in spans if s.trace_id == replica.trace_id]
    (ingress,) = [s for s in ancestors(replica, trace) if s.name.startswith(("chat ", "text_completion "))]
    (engine,) = [s for s in children(replica, trace) if s.name == "llm_request"]
    return ingress, replica, engine, trace


def check_tree(ingress: ReceivedSpan, replica: ReceivedSpan, engine: ReceivedSpan, trace: list[ReceivedSpan],
               operation: str, usage: Optional[dict], finish_reason: str) -> None:
    # (Serve: replica_handle_request) -> ingress -> replica -> engine, all in the model replica's
    # process: the ingress calls the engine without a Ray hop, so nothing lies between.
    assert replica.parent_id == ingress.span_id
    (serve_span,) = [s for s in trace if s.span_id == ingress.parent_id]
    assert serve_span.name.split()[0] == "replica_handle_request"
    assert ingress.attributes["gen_ai.operation.name"] == replica.attributes["gen_ai.operation.name"] == operation
    assert ingress.attributes["gen_ai.request.model"] == replica.attributes["gen_ai.request.model"] == MODEL
    assert ingress.attributes["http.response.status_code"] == 200
    assert replica.attributes["gen_ai.response.model"] == MODEL
    assert replica.attributes["gen_ai.response.finish_reasons"] == [finish_reason]
    # The replica is the Serve replica that ran the request.
    assert replica.attributes["shardserve.replica"] == serve_span.attributes["replica_id"]
    # vLLM's engine span carries tokens and latencies.
    assert engine.attributes["gen_ai.latency.time_to_first_token"] > 0
    assert engine.attributes["gen_ai.latency.time_in_queue"] >= 0
    assert engine.attributes["gen_ai.latency.e2e"] >= engine.attributes["gen_ai.latency.time_to_first_token"]
    if usage is not None:
        assert engine.attributes["gen_ai.usage.prompt_tokens"] == usage["prompt_tokens"]
        assert engine.attributes["gen_ai.usage.completion_tokens"] == usage["completion_tokens"]
    # Each span covers its children: the ingress span lasts until the response's end.
    assert ingress.start_ns <= replica.start_ns <= engine.start_ns
    assert engine.end_ns <= replica.end_ns <= ingress.end_ns
    assert not (ingress.is_error or replica.is_error or engine.is_error)


# ------------------------------------------------------------------ traces

def test_cold_start_phases_appear_in_order(stack, receiver):
    spans = receiver.wait_for(lambda s: any(x.name == "shardserve.cold_start" for x in s), SPAN_WAIT_S)
    (start,) = [s for s in spans if s.name == "shardserve.cold_start"]
    names = [e[0] for e in start.events]
    assert names == ["model_fetched", "weights_loaded", "engine_started", "ready"]
    times = [start.start_ns, *(e[1] for e in start.events), start.end_ns]
    assert times == sorted(times)
    phases = {p: start.attributes[f"shardserve.cold_start.{p}_seconds"]
              for p in ("model_fetch", "weight_load", "engine_start", "first_ready", "total")}
    assert all(phases[p] > 0 for p in ("model_fetch", "weight_load", "engine_start")), phases
    assert sum(v for k, v in phases.items() if k != "total") == pytest.approx(phases["total"], abs=0.01)
    assert (start.end_ns - start.start_ns) / 1e9 == pytest.approx(phases["total"], abs=0.01)
    # vLLM's own start spans (engine processes, model load) nest under it.
    trace = [s for s in receiver.wait_for(
        lambda s: any(x.name == "Load model" and x.trace_id == start.trace_id for x in s), SPAN_WAIT_S)
        if s.trace_id == start.trace_id]
    (load,) = [s for s in trace if s.name == "Load model"]
    assert start in ancestors(load, trace)
    # `shardserve status` shows the same start.
    out = subprocess.run([*shardserve_command(), "status", "--json"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [r for r in json.loads(out.stdout) if r["name"] == SMALL_QUEUE]
    assert len(rows) == 1, (out.stdout, out.stderr[-2000:])
    (row,) = rows
    assert row["last_cold_start"] == pytest.approx({k: round(v, 2) for k, v in phases.items()}, abs=0.011)
    print("\ncold start:", ", ".join(f"{k} {v:.1f}s" for k, v in phases.items()))


def test_non_streamed_chat_span_tree(stack, receiver):
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Say something"}], "max_tokens": 8,
            "ignore_eos": True}
    response = httpx.post(f"{stack.base_url}/v1/chat/completions", json=body, timeout=60).json()
    ingress, replica, engine, trace = request_tree(
        receiver, lambda s: s.attributes.get("gen_ai.response.id") == response["id"])
    check_tree(ingress, replica, engine, trace, "chat", response["usage"], "length")
    assert ingress.name == "chat tiny" and replica.name == "replica chat tiny"
    assert ingress.attributes["gen_ai.request.max_tokens"] == 8
    assert ingress.attributes["shardserve.request.stream"] is False
    assert replica.attributes["gen_ai.usage.input_tokens"] == response["usage"]["prompt_tokens"]
    assert replica.attributes["gen_ai.usage.output_tokens"] == response["usage"]["completion_tokens"] == 8
    assert engine.attributes["gen_ai.request.id"] == response["id"]


def test_streamed_completion_span_tree(stack, receiver):
    body = {"model": MODEL, "prompt": "Once upon a time", "max_tokens": 12, "stream": True, "ignore_eos": True}
    chunks = []
    with httpx.stream("POST", f"{stack.base_url}/v1/completions", json=body, timeout=60) as response:
        assert response.status_code == 200
        # Split at "\n" only: iter_lines() also splits at U+2028 and U+0085, which generated text may hold.
        chunks = [json.loads(line[6:]) for line in "".join(response.iter_text()).split("\n")
                  if line.startswith("data: {")]
    response_id = chunks[0]["id"]
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    ingress, replica, engine, trace = request_tree(
        receiver, lambda s: s.attributes.get("gen_ai.response.id") == response_id)
    check_tree(ingress, replica, engine, trace, "text_completion", None, "length")
    assert ingress.name == "text_completion tiny" and ingress.attributes["shardserve.request.stream"] is True
    assert engine.attributes["gen_ai.usage.completion_tokens"] == 12
    # Without include_usage the stream carries no usage: the engine span has the counts.
    assert "gen_ai.usage.output_tokens" not in replica.attributes


def test_client_traceparent_is_continued_and_its_sampling_decision_kept(stack, receiver):
    trace_id, parent_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    unsampled = "0af7651916cd43dd8448eb211c80319c"
    body = {"model": MODEL, "prompt": "traced", "max_tokens": 4}
    skipped = httpx.post(f"{stack.base_url}/v1/completions", json=body, timeout=60,
                         headers={"traceparent": f"00-{unsampled}-b7ad6b7169203331-00"})
    response = httpx.post(f"{stack.base_url}/v1/completions", json=body, timeout=60,
                          headers={"traceparent": f"00-{trace_id}-{parent_id}-01"})
    assert skipped.status_code == response.status_code == 200
    ingress, replica, engine, trace = request_tree(
        receiver, lambda s: s.trace_id == trace_id and s.name.startswith("replica "))
    roots = [s for s in trace if s.parent_id not in by_id(trace)]
    assert [(r.name.split()[0], r.parent_id) for r in roots] == [("replica_handle_request", parent_id)]
    assert {ingress.trace_id, replica.trace_id, engine.trace_id} == {trace_id}
    assert engine.attributes["gen_ai.request.id"].startswith(response.json()["id"])
    # The client said "not sampled": nothing of that trace was recorded anywhere.
    assert not [s for s in receiver.snapshot() if s.trace_id == unsampled]


def test_errors_are_recorded_on_the_spans(stack, receiver):
    # The engine refuses a prompt longer than the context (256 tokens): 400 from the replica.
    prompt = " ".join(f"word{i}" for i in range(400))
    trace_id = "5bf92f3577b34da6a3ce929d0e0e4736"
    response = httpx.post(f"{stack.base_url}/v1/completions", json={"model": MODEL, "prompt": prompt, "max_tokens": 4},
                          headers={"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"}, timeout=60)
    assert response.status_code == 400

    def arrived(spans):
        names = {s.name for s in spans if s.trace_id == trace_id}
        return {"text_completion tiny", "replica text_completion tiny"} <= names

    trace = [s for s in receiver.wait_for(arrived, SPAN_WAIT_S) if s.trace_id == trace_id]
    (ingress,) = [s for s in trace if s.name == "text_completion tiny"]
    (replica,) = [s for s in trace if s.name == "replica text_completion tiny"]
    assert replica.attributes["error.type"] == "400"
    assert ingress.attributes["error.type"] == "400"
    assert [e[0] for e in ingress.events] == ["exception"]
    assert "context" in ingress.events[0][2]["exception.message"]
    # A client error is the client's: the span is not marked failed (OpenTelemetry's HTTP rule).
    assert not ingress.is_error and not replica.is_error


# ------------------------------------------------------------------ metrics

def scrape(url: str) -> dict[tuple[str, tuple], float]:
    text = httpx.get(url, timeout=10).text
    out: dict[tuple[str, tuple], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def total(samples: dict, name: str, **labels: str) -> float:
    """Sum of a metric's samples whose labels include `labels`."""
    return sum(v for (n, lbls), v in samples.items() if n == name and labels.items() <= dict(lbls).items())


def present(samples: dict, name: str, **labels: str) -> bool:
    return any(n == name and labels.items() <= dict(lbls).items() for n, lbls in samples)


# The counters test_metrics_match_known_traffic checks against its traffic.
TRAFFIC_COUNTERS = (
    "ray_serve_num_http_requests_total", "ray_serve_http_request_latency_ms_count",
    "ray_shardserve_rejected_requests_total", "ray_vllm_request_success_total", "ray_vllm_prompt_tokens_total",
    "ray_vllm_generation_tokens_total", "ray_vllm_time_to_first_token_seconds_count",
    "ray_vllm_request_time_per_output_token_seconds_count", "ray_vllm_e2e_request_latency_seconds_count",
    "ray_vllm_request_queue_time_seconds_count", "ray_vllm_inter_token_latency_seconds_count",
)


def settled(url: str) -> dict:
    """A scrape once Ray's metrics pipeline has caught up: the traffic counters equal in two
    scrapes a few report intervals (1 s here) apart. Not all counters: Ray's own keep moving."""

    def counters(samples: dict) -> dict:
        return {k: v for k, v in samples.items() if k[0] in TRAFFIC_COUNTERS}

    previous = counters(scrape(url))
    deadline = time.monotonic() + 75
    while True:
        time.sleep(2.5)  # the interval of this poll: a few report intervals between the two scrapes
        current = scrape(url)
        if counters(current) == previous:
            return current
        assert time.monotonic() < deadline, "the traffic counters did not settle within 75 s"
        previous = counters(current)


class Sampler:
    """Scrapes in the background: the names seen and each gauge's largest value.

    Ray exports a gauge only in the report windows where it was set, and vLLM
    sets its queue gauges only while the engine steps, so gauges are watched
    during the traffic, not read after it."""

    def __init__(self, url: str, gauges: list[tuple[str, dict]]):
        self.url, self.gauges = url, gauges
        self.names: set[str] = set()
        self.peaks: dict[str, float] = {}
        self._scraped = threading.Condition()
        self._scrapes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                samples = scrape(self.url)
            except httpx.HTTPError:
                continue
            self.names |= {n for n, _ in samples}
            for name, labels in self.gauges:
                if present(samples, name, **labels):
                    self.peaks[name] = max(self.peaks.get(name, 0.0), total(samples, name, **labels))
            with self._scraped:
                self._scrapes += 1
                self._scraped.notify_all()
            self._stop.wait(0.3)

    def wait_for_next_scrape(self, timeout_s: float = 30.0) -> None:
        """Returns once a scrape that starts after this call has been taken in."""
        with self._scraped:
            # The scrape under way may have started before the call: wait for the one after it.
            wanted = self._scrapes + 2
            assert self._scraped.wait_for(lambda: self._scrapes >= wanted, timeout_s), "the sampler stopped scraping"

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *_exc) -> None:
        self._stop.set()
        self._thread.join()


async def burst(base_url: str, n: int, max_tokens: int) -> list[tuple[int, dict]]:
    body = {"model": MODEL, "prompt": "count", "max_tokens": max_tokens, "ignore_eos": True}
    async with httpx.AsyncClient(base_url=base_url, timeout=120) as client:
        responses = await asyncio.gather(*(client.post("/v1/completions", json=body) for _ in range(n)))
    return [(r.status_code, r.json()) for r in responses]


def steady_load(base_url: str, clients: int, seconds: float) -> list[int]:
    """`clients` closed loops of completions for `seconds`, on one shared client; their statuses."""
    body = {"model": MODEL, "prompt": "count", "max_tokens": 64, "ignore_eos": True}

    async def run() -> list[int]:
        deadline = time.monotonic() + seconds
        async with httpx.AsyncClient(base_url=base_url, timeout=120) as client:
            async def loop() -> list[int]:
                statuses = []
                while time.monotonic() < deadline:
                    statuses.append((await client.post("/v1/completions", json=body)).status_code)
                return statuses

            return [s for statuses in await asyncio.gather(*(loop() for _ in range(clients))) for s in statuses]

    return asyncio.run(run())


def test_queue_gauges_under_steady_load(stack, metrics_url):
    """Three clients against a replica whose engine takes two requests at once
    (and which admits 2 + 2 queued): the engine's running gauge shows requests,
    never more than its batch of 2, and the third request waits in the engine's
    own queue, where the autoscaler reads it. (A gauge is sampled when Ray
    exports it, so a short wait may fall between samples.)"""
    gauges = [("ray_vllm_num_requests_running", {"model_name": MODEL}),
              ("ray_vllm_num_requests_waiting", {"model_name": MODEL})]
    with Sampler(metrics_url, gauges) as sampler:
        statuses = steady_load(stack.base_url, 3, 10.0)
    assert statuses and set(statuses) == {200}, statuses
    peaks = sampler.peaks
    assert 1 <= peaks.get("ray_vllm_num_requests_running", 0) <= 2, peaks
    assert 0 <= peaks.get("ray_vllm_num_requests_waiting", -1) <= 1, peaks


def test_metrics_match_known_traffic(stack, metrics_url):
    before = settled(metrics_url)
    # A burst past the queue (2 running + 2 queued): some get 429 at once. Sent from one
    # event loop, so all twelve are on their way at once (threads here start them unevenly).
    with Sampler(metrics_url, []) as sampler:
        results = asyncio.run(burst(stack.base_url, 12, 48))
        statuses = [status for status, _ in results]
        served = [body["usage"] for status, body in results if status == 200]
        rejected = statuses.count(429)
        assert len(served) + rejected == 12 and rejected >= 1 and len(served) >= 2, statuses
        prompt_tokens = sum(u["prompt_tokens"] for u in served)
        generated = sum(u["completion_tokens"] for u in served)
        assert generated == 48 * len(served)

        # Serve counts HTTP requests from HAProxy's log, by the application's route prefix ("/").
        expected = {
            ("ray_serve_num_http_requests_total", (("route", "/"), ("status_code", "200"))): len(served),
            ("ray_serve_num_http_requests_total", (("route", "/"), ("status_code", "429"))): rejected,
            ("ray_serve_http_request_latency_ms_count", (("route", "/"),)): 12,
            ("ray_shardserve_rejected_requests_total", (("reason", "queue_full"),)): rejected,
            ("ray_vllm_request_success_total", (("model_name", MODEL),)): len(served),
            ("ray_vllm_prompt_tokens_total", (("model_name", MODEL),)): prompt_tokens,
            ("ray_vllm_generation_tokens_total", (("model_name", MODEL),)): generated,
            ("ray_vllm_time_to_first_token_seconds_count", (("model_name", MODEL),)): len(served),
            ("ray_vllm_request_time_per_output_token_seconds_count", (("model_name", MODEL),)): len(served),
            ("ray_vllm_e2e_request_latency_seconds_count", (("model_name", MODEL),)): len(served),
            ("ray_vllm_request_queue_time_seconds_count", (("model_name", MODEL),)): len(served),
            ("ray_vllm_inter_token_latency_seconds_count", (("model_name", MODEL),)): generated - len(served),
        }

        def deltas(samples: dict) -> dict:
            return {key: total(samples, key[0], **dict(key[1])) - total(before, key[0], **dict(key[1])) for key in expected}

        poll(lambda: all(got >= expected[k] for k, got in deltas(scrape(metrics_url)).items()), METRICS_WAIT_S,
             "the burst's counts on the endpoint")
        # The burst's last report is out: the sampler's next scrape has the gauges set with it.
        sampler.wait_for_next_scrape()
    # Nothing more arrives once the endpoint settles: the counts match the traffic exactly.
    assert deltas(settled(metrics_url)) == expected

    # Gauges set now and then: one model replica, desired and running; one start, every phase once.
    gauges = {
        ("ray_serve_autoscaling_target_replicas", (("application", SMALL_QUEUE), ("deployment", "llm"))): 1,
        ("ray_serve_deployment_replica_healthy", (("application", SMALL_QUEUE), ("deployment", "llm"))): 1,
        **{("ray_shardserve_cold_start_seconds_count", (("model", MODEL), ("phase", phase))): 1
           for phase in ("model_fetch", "weight_load", "engine_start", "first_ready", "total")},
    }
    documented = documented_metrics("Metrics")
    assert len(documented) >= 15
    seen_values: dict = {}
    seen_names = set(sampler.names)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        samples = scrape(metrics_url)
        seen_names |= {n for n, _ in samples}
        for key in gauges:
            if present(samples, key[0], **dict(key[1])):
                seen_values[key] = total(samples, key[0], **dict(key[1]))
        missing = [n for n in documented if not {n, f"{n}_count", f"{n}_total"} & seen_names]
        if seen_values.keys() == gauges.keys() and not missing:
            break
        time.sleep(1.0)
    assert seen_values == gauges
    # Every metric docs/observability.md documents was on the endpoint.
    assert missing == []
