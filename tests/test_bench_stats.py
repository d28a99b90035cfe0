"""The benchmark's metrics on synthetic timings, checked against vLLM's definitions."""

import random

import numpy as np
import pytest

from shardserve.bench.stats import (
    RequestResult,
    compute_distribution,
    compute_metrics,
    parse_goodput,
    percentile,
    request_tpot,
)


def ok(start=0.0, ttft=0.1, itl=(0.02, 0.02, 0.02), tokens=4, prompt=10, usage=True) -> RequestResult:
    return RequestResult(
        success=True, start_time=start, ttft=ttft, itl=list(itl), latency=ttft + sum(itl),
        output_tokens=tokens, prompt_tokens=prompt, tokens_from_usage=usage,
    )


def failed(reason: str) -> RequestResult:
    return RequestResult(success=False, error=reason, detail="why")


@pytest.mark.parametrize("p", [0, 1, 10, 25, 50, 90, 99, 99.9, 100])
def test_percentile_matches_numpy_linear_interpolation(p):
    rng = random.Random(7)
    values = [rng.expovariate(3.0) for _ in range(101)] + [5.0]
    assert percentile(values, p) == pytest.approx(float(np.percentile(values, p)))


def test_percentile_edges():
    assert percentile([], 50) == 0.0
    assert percentile([3.0], 99) == 3.0
    assert percentile([1.0, 2.0], 50) == 1.5
    assert percentile([4.0, 1.0, 3.0, 2.0], 100) == 4.0  # unsorted input
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def test_distribution_is_in_milliseconds_with_numpy_std():
    seconds = [0.010, 0.020, 0.030, 0.100]
    d = compute_distribution(seconds, percentiles=(50, 90))
    assert d.mean == pytest.approx(40.0)
    assert d.std == pytest.approx(float(np.std([10, 20, 30, 100])))
    assert d.median == pytest.approx(25.0)
    assert d.percentiles[90] == pytest.approx(float(np.percentile([10, 20, 30, 100], 90)))
    assert d.count == 4
    assert compute_distribution([]).count == 0 and compute_distribution([]).mean == 0.0


def test_tpot_excludes_the_first_token():
    # 100 ms to the first token, then 9 more tokens over 450 ms -> 50 ms each.
    r = RequestResult(success=True, ttft=0.1, latency=0.55, output_tokens=10)
    assert request_tpot(r) == pytest.approx(0.05)
    assert request_tpot(RequestResult(success=True, ttft=0.1, latency=0.1, output_tokens=1)) == 0.0


def test_metrics_of_a_synthetic_run():
    results = [
        ok(ttft=0.100, itl=(0.02, 0.02, 0.02), tokens=4, prompt=10),  # e2el 0.16, tpot 0.02
        ok(ttft=0.300, itl=(0.05, 0.05), tokens=3, prompt=20),  # e2el 0.40, tpot 0.05
        ok(ttft=0.050, itl=(), tokens=1, prompt=5),  # one token: no TPOT, no ITL
        failed("HTTP 429"),
        failed("HTTP 429"),
        failed("ReadTimeout"),
    ]
    m = compute_metrics(results, duration_s=2.0, percentiles=(50, 99))
    assert (m.completed, m.failed) == (3, 3)
    assert m.errors == {"HTTP 429": 2, "ReadTimeout": 1}
    assert m.total_input_tokens == 35 and m.total_output_tokens == 8
    assert m.request_throughput == pytest.approx(1.5)
    assert m.output_throughput == pytest.approx(4.0)
    assert m.total_token_throughput == pytest.approx(21.5)
    assert m.ttft.median == pytest.approx(100.0) and m.ttft.count == 3
    assert m.ttft.mean == pytest.approx(150.0)
    assert m.tpot.count == 2 and m.tpot.mean == pytest.approx(35.0)
    assert m.itl.count == 5 and m.itl.median == pytest.approx(20.0)
    assert m.e2el.median == pytest.approx(160.0)
    assert m.e2el.percentiles[99] == pytest.approx(float(np.percentile([160, 400, 50], 99)))
    assert m.request_goodput is None and m.good_requests is None
    assert m.tokens_from_usage


def test_goodput_counts_requests_meeting_every_target():
    results = [
        ok(ttft=0.100, itl=(0.02, 0.02, 0.02), tokens=4),  # ttft 100, tpot 20
        ok(ttft=0.300, itl=(0.05, 0.05), tokens=3),  # ttft 300 misses
        ok(ttft=0.050, itl=(), tokens=1),  # tpot counts as 0 (vLLM)
        ok(ttft=0.150, itl=(0.09, 0.09), tokens=3),  # tpot 90 misses
        failed("HTTP 500"),  # never good
    ]
    m = compute_metrics(results, duration_s=4.0, goodput_ms={"ttft": 200, "tpot": 50})
    assert m.good_requests == 2
    assert m.request_goodput == pytest.approx(0.5)
    only_e2el = compute_metrics(results, duration_s=1.0, goodput_ms={"e2el": 200})
    assert only_e2el.good_requests == 2  # 160 ms and 50 ms


def test_tokens_counted_from_chunks_are_flagged():
    m = compute_metrics([ok(), ok(usage=False)], duration_s=1.0)
    assert not m.tokens_from_usage
    assert m.as_dict()["output_tokens_counted_by"] == "chunks"


def test_all_failed_run_reports_zeros_not_errors():
    m = compute_metrics([failed("ConnectError")], duration_s=1.0)
    assert m.completed == 0 and m.ttft.count == 0 and m.output_throughput == 0.0
    assert m.errors == {"ConnectError": 1}
    assert m.as_dict()["ttft"]["p99_ms"] == 0.0
    with pytest.raises(ValueError):
        compute_metrics([], duration_s=0.0)


def test_parse_goodput():
    assert parse_goodput(["ttft:200", "TPOT:12.5", "e2el:3000"]) == {"ttft": 200.0, "tpot": 12.5, "e2el": 3000.0}
    for bad in (["ttft"], ["itl:5"], ["ttft:fast"], ["ttft:0"]):
        with pytest.raises(ValueError):
            parse_goodput(bad)
