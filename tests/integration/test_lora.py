"""LoRA adapters on the real local stack: two replicas of the tiny model,
the builtin adapters listed by name and a file:// dynamic source holding
copies of one and a few broken ones. Each replica keeps two adapters, so
six ask for evictions. Spans (the replica attribute) show where requests ran."""

from __future__ import annotations

import json
import shutil
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from safetensors.numpy import save_file

from shardserve.builtin.tiny_adapters import adapter_config, ensure_builtin_adapter
from tests.integration.autoscale_status import read_status
from tests.integration.conftest import StackKind, Stacks, write_spec
from tests.integration.observability_doc import documented_metrics
from tests.integration.otlp_receiver import OtlpReceiver, ReceivedSpan
from tests.integration.stack import LocalStack, free_port

LORA = "lora"
pytestmark = [pytest.mark.integration, pytest.mark.stacks(LORA)]

PROMPT = "The river runs"
COPIES = ("copy-1", "copy-2", "copy-3")  # tiny-a's files under other names
SPAN_WAIT_S = 60.0
METRICS_WAIT_S = 60.0


def _dynamic_adapters(root: Path) -> Path:
    """A directory of adapters: copies of tiny-a, one above maxRank, one whose weights do not fit the model."""
    root.mkdir()
    source = ensure_builtin_adapter("tiny-a")
    for name in (*COPIES, "affine"):
        shutil.copytree(source, root / name)
    shutil.copytree(source, root / "too-big")
    (root / "too-big" / "adapter_config.json").write_text(json.dumps({**adapter_config("tiny-a"), "r": 16}))
    (root / "bad-shape").mkdir()
    (root / "bad-shape" / "adapter_config.json").write_text(json.dumps(adapter_config("tiny-a")))
    # v_proj's output is 128 wide (2 KV heads of 64); these B matrices are 256 wide.
    wrong = {f"base_model.model.model.layers.{i}.self_attn.v_proj.lora_{ab}.weight": np.zeros(shape, np.float32)
             for i in range(2) for ab, shape in (("A", (8, 256)), ("B", (256, 8)))}
    save_file(wrong, str(root / "bad-shape" / "adapter_model.safetensors"))
    return root


@pytest.fixture(scope="module")
def metrics_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def stack(stacks: Stacks, otlp_receiver: OtlpReceiver, metrics_port: int) -> LocalStack:
    def spec(tmp: Path) -> Path:
        dynamic = _dynamic_adapters(tmp / "adapters")
        return write_spec(tmp, LORA, replicas=2, lora={
            "maxRank": 8, "maxAdapters": 1, "maxCpuAdapters": 2,
            "adapters": [{"name": "tiny-a", "source": "builtin://tiny-a"}, {"name": "tiny-b", "source": "builtin://tiny-b"}],
            "dynamicSource": f"file://{dynamic}",
        }, telemetry={"tracing": {"endpoint": otlp_receiver.endpoint}})

    return stacks.get(LORA, StackKind(spec=spec, env={"OTEL_BSP_SCHEDULE_DELAY": "200",
                                                      "RAY_metrics_report_interval_ms": "1000"},
                                      args=("--metrics-port", str(metrics_port))))


@pytest.fixture(scope="module")
def http(stack: LocalStack):
    with httpx.Client(base_url=stack.base_url, timeout=120) as client:
        yield client


def complete(http: httpx.Client, model: str, max_tokens: int = 12) -> httpx.Response:
    return http.post("/v1/completions", json={"model": model, "prompt": PROMPT, "max_tokens": max_tokens,
                                              "temperature": 0})


def text(http: httpx.Client, model: str) -> str:
    response = complete(http, model)
    assert response.status_code == 200, response.text
    assert response.json()["model"] == model.split(":")[-1]
    return response.json()["choices"][0]["text"]


def adapter_counts(metrics_url: str, name: str) -> Counter:
    """A shardserve adapter counter's total, by adapter."""
    counts: Counter = Counter()
    for family in text_string_to_metric_families(httpx.get(metrics_url, timeout=10).text):
        for sample in family.samples:
            if sample.name == f"ray_{name}_total":
                counts[sample.labels["adapter"]] += sample.value
    return counts


def replica_spans(receiver: OtlpReceiver, adapter: Optional[str], count: int, since: int = 0) -> list[ReceivedSpan]:
    """The model replicas' spans of requests that ran with `adapter` (None: the base model), once `count`
    arrived; only spans received after the first `since` (the receiver serves every stack of the session)."""
    def matching(spans: list[ReceivedSpan]) -> list[ReceivedSpan]:
        return [s for s in spans[since:]
                if s.name.startswith("replica ") and s.attributes.get("shardserve.adapter") == adapter]

    return matching(receiver.wait_for(lambda spans: len(matching(spans)) >= count, SPAN_WAIT_S))


# ------------------------------------------------------------------ routing (first: the replicas hold nothing yet)


def test_same_adapter_requests_run_where_it_is_loaded(stack, http, otlp_receiver):
    since = len(otlp_receiver.snapshot())
    assert text(http, "affine")  # loaded by whichever replica HAProxy picked
    time.sleep(2)  # the other replica's view of who holds what lives 1 s; Serve's router learns in 0.1 s
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: complete(http, "affine", max_tokens=24), range(8)))
        base = list(pool.map(lambda _: complete(http, "tiny", max_tokens=24), range(8)))
    assert [r.status_code for r in answers + base] == [200] * 16
    spans = replica_spans(otlp_receiver, "affine", 9, since)
    ran_on = Counter(s.attributes["shardserve.replica"] for s in spans)
    holder = min(spans, key=lambda s: s.start_ns).attributes["shardserve.replica"]  # where the first request loaded it
    # Serve's router prefers the holder; a holder that does not answer its queue probe in time (busy on 2
    # cores) loses a request to the replica with the fewest adapters, which loads it too.
    assert sum(ran_on.values()) == 9 and ran_on[holder] >= 7, ran_on
    # The requests HAProxy gave the other replica went through Serve's router; base requests spread over both.
    routes = Counter(s.attributes.get("shardserve.adapter.route") for s in otlp_receiver.snapshot()
                     if not s.name.startswith("replica ") and s.attributes.get("shardserve.adapter") == "affine")
    assert routes["elsewhere"] >= 1 and routes["here"] >= 1, routes
    base_on = Counter(s.attributes["shardserve.replica"] for s in replica_spans(otlp_receiver, None, 8, since))
    assert len(base_on) == 2, base_on


# ------------------------------------------------------------------ what adapters do to output


def test_adapters_change_greedy_output_and_each_is_stable(http):
    base, a, b = text(http, "tiny"), text(http, "tiny-a"), text(http, "tiny-b")
    assert len({base, a, b}) == 3
    assert text(http, "tiny-a") == a and text(http, "tiny:tiny-b") == b  # <model id>:<adapter> too
    assert text(http, "copy-1") == a  # the same files under another name


def test_models_lists_the_adapters_with_their_parent(http):
    listed = {m["id"]: m for m in http.get("/v1/models").json()["data"]}
    assert {"tiny", "tiny-a", "tiny-b"} <= set(listed)
    assert listed["tiny-a"]["metadata"]["parent"] == "tiny" and "parent" not in listed["tiny"]["metadata"]
    assert http.get("/v1/models/tiny-b").json()["id"] == "tiny-b"
    missing = http.get("/v1/models/never-loaded")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"


@pytest.mark.parametrize("model, status, code, fragment", [
    ("nope", 404, "model_not_found", "adapter 'nope': file://"),
    ("tiny:nope", 404, "model_not_found", "adapter 'nope'"),
    ("../tiny-a", 404, "model_not_found", "does not exist"),
    ("too-big", 400, "invalid_adapter", "adapter 'too-big': adapter_config.json r: rank 16 is above spec.lora.maxRank (8)"),
    ("bad-shape", 400, "invalid_adapter", "adapter 'bad-shape': the engine cannot load it"),
])
def test_adapters_that_cannot_serve_get_openai_errors_and_harm_nothing(http, model, status, code, fragment):
    response = complete(http, model)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert (error["code"], error["param"]) == (code, "model") and fragment in error["message"], error
    assert text(http, "tiny") and text(http, "tiny-a")
    assert http.get("/health").status_code == 200


# ------------------------------------------------------------------ eviction


def test_past_the_bound_adapters_are_evicted_and_reloaded_on_demand(http, metrics_port):
    metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
    names = ("tiny-a", "tiny-b", *COPIES, "affine")  # 6 adapters, 2 replicas x 2 held
    first = {name: text(http, name) for name in names}
    again = {name: text(http, name) for name in names}
    assert again == first

    deadline = time.monotonic() + METRICS_WAIT_S
    while True:
        evictions, loads = adapter_counts(metrics_url, "shardserve_adapter_evictions"), \
            adapter_counts(metrics_url, "shardserve_adapter_loads")
        if sum(evictions.values()) >= 2 or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert sum(evictions.values()) >= 2, evictions
    # A reload is one more load of an adapter some replica held before.
    assert sum(loads[name] for name in names) > len(names), loads
    held = read_status(LORA)["adapters"]
    assert len(held) == 2 and all(1 <= len(names_held) <= 2 for names_held in held.values()), held
    exported = {sample.name.removesuffix("_total").removesuffix("_sum")
                for family in text_string_to_metric_families(httpx.get(metrics_url, timeout=10).text)
                for sample in family.samples}
    documented = documented_metrics("LoRA adapters")
    assert len(documented) == 5, documented
    missing = [name for name in documented if name.removesuffix("_total") not in exported]
    assert missing == [], missing


