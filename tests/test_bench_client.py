"""The benchmark's client and command against a small fake OpenAI server
(streamed SSE with known delays), served over real HTTP in this process."""

import asyncio
import gc
import json
import socket
import threading
import time

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from shardserve.bench.client import Endpoint, build_payload, send_request
from shardserve.bench.workload import RequestSpec
from shardserve.cli import main

KEY = "sk-bench"
FIRST_S, GAP_S, CHUNKS = 0.15, 0.03, 5
SLACK_S = 2.0  # how late a loaded machine may run a timer or a read


@pytest.fixture(autouse=True)
def no_collector_pause():
    """The timings here are a fake server's, in this process. A full pass of the cyclic garbage collector
    walks every object the whole test session made (0.3-0.9 s at a time) and would show as a slow token."""
    enabled = gc.isenabled()
    gc.disable()
    yield
    if enabled:
        gc.enable()


def sse(obj) -> str:
    return f"data: {json.dumps(obj)}\n\n"


async def completions(request: Request):
    if request.headers.get("authorization") != f"Bearer {KEY}":
        return JSONResponse({"error": {"message": "Incorrect API key provided.", "type": "authentication_error",
                                       "param": None, "code": "invalid_api_key"}}, status_code=401)
    body = await request.json()
    prompt = body.get("prompt", "")
    chat = "messages" in body
    if prompt == "busy":
        return JSONResponse({"error": {"message": "queue full", "type": "rate_limit_error",
                                       "param": None, "code": "queue_full"}}, status_code=429)

    async def stream():
        await asyncio.sleep(FIRST_S)
        for i in range(CHUNKS):
            if i:
                await asyncio.sleep(GAP_S)
            if prompt == "fail" and i == 2:
                yield sse({"error": {"message": "engine died", "type": "internal_error", "code": 500}})
                yield "data: [DONE]\n\n"
                return
            if chat:
                choice = {"index": 0, "delta": {"content": f"t{i} "}, "finish_reason": None}
            else:
                choice = {"index": 0, "text": f"t{i} ", "finish_reason": None}
            yield ": keep-alive comment\n\n" if i == 1 else ""
            yield sse({"id": "x", "choices": [choice], "usage": None})
        if prompt == "cut":
            return  # no usage, no [DONE]
        if body.get("stream_options", {}).get("include_usage") and prompt != "no usage":
            # Usage says 2 tokens per chunk: the count comes from here, not from chunks.
            yield sse({"id": "x", "choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 2 * CHUNKS,
                                                          "total_tokens": 7 + 2 * CHUNKS}})
        yield "data: [DONE]\n\n"

    return StreamingResponse(stream(), media_type="text/event-stream")


async def models(_request: Request):
    return JSONResponse({"object": "list", "data": [{"id": "fake-model", "object": "model"}]})


@pytest.fixture(scope="module")
def fake_server():
    app = Starlette(routes=[
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/v1/chat/completions", completions, methods=["POST"]),
        Route("/v1/models", models),
    ])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}/v1"
    server.should_exit = True
    thread.join(10)


def send(base_url, prompt="hello", api="completions", key=KEY, **spec):
    endpoint = Endpoint(base_url=base_url, model="fake-model", api=api, api_key=key)

    async def go():
        async with httpx.AsyncClient(timeout=10) as client:
            return await send_request(client, endpoint, RequestSpec(prompt=prompt, max_tokens=16, **spec))

    return asyncio.run(go())


@pytest.mark.parametrize("api", ["completions", "chat"])
def test_timings_and_tokens_of_a_stream(fake_server, api):
    r = send(fake_server, api=api)
    assert r.success, (r.error, r.detail)
    # Only what the server's sleeps guarantee: a descheduled client reads late
    # and may then read two chunks at once, so single gaps prove little.
    assert FIRST_S <= r.ttft < FIRST_S + SLACK_S
    assert len(r.itl) == CHUNKS - 1 and all(gap >= 0 for gap in r.itl)
    assert (CHUNKS - 1) * GAP_S * 0.9 <= sum(r.itl) < (CHUNKS - 1) * GAP_S + SLACK_S
    assert r.latency == pytest.approx(r.ttft + sum(r.itl))
    assert (r.output_tokens, r.prompt_tokens, r.tokens_from_usage) == (2 * CHUNKS, 7, True)


def test_without_usage_tokens_are_counted_as_chunks(fake_server):
    r = send(fake_server, prompt="no usage")
    assert r.success and not r.tokens_from_usage
    assert r.output_tokens == CHUNKS


@pytest.mark.parametrize("prompt, key, error, detail", [
    ("hello", None, "HTTP 401", "Incorrect API key provided."),
    ("hello", "wrong", "HTTP 401", "Incorrect API key provided."),
    ("busy", KEY, "HTTP 429", "queue full"),
    ("fail", KEY, "error in stream", "engine died"),
    ("cut", KEY, "stream ended early", ""),
])
def test_failures_are_counted_with_their_reason(fake_server, prompt, key, error, detail):
    r = send(fake_server, prompt=prompt, key=key)
    assert not r.success
    assert r.error == error
    assert r.detail == detail


def test_unreachable_server_is_a_failure_not_an_exception():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens
    r = send(f"http://127.0.0.1:{port}/v1")
    assert not r.success and r.error == "ConnectError"


def test_payloads():
    completions = build_payload(Endpoint("u", "m", ignore_eos=True), RequestSpec(prompt="p", max_tokens=3))
    assert completions == {"model": "m", "max_tokens": 3, "stream": True,
                           "stream_options": {"include_usage": True}, "prompt": "p", "ignore_eos": True}
    chat = build_payload(Endpoint("u", "m", api="chat"), RequestSpec(prompt="p", max_tokens=3))
    assert chat["messages"] == [{"role": "user", "content": "p"}] and "ignore_eos" not in chat
    with pytest.raises(ValueError, match="chat"):
        build_payload(Endpoint("u", "m"), RequestSpec(messages=({"role": "user", "content": "x"},), max_tokens=1))


def test_bench_command_reports_json_and_table(fake_server, capsys, tmp_path):
    out = tmp_path / "bench.json"
    status = main(["bench", "--base-url", fake_server, "--api-key", KEY, "--concurrency", "1", "4",
                   "--num-requests", "4", "--warmup", "1", "--goodput", "ttft:500", "--json", str(out),
                   "--no-progress"])
    assert status == 0
    report = json.loads(out.read_text())
    assert report["model"] == "fake-model"  # taken from /v1/models
    assert [level["concurrency"] for level in report["levels"]] == [1, 4]
    for level in report["levels"]:
        m = level["metrics"]
        assert m["completed"] == 4 and m["failed"] == 0 and m["good_requests"] == 4
        assert m["total_output_tokens"] == 4 * 2 * CHUNKS
        assert FIRST_S * 1000 <= m["ttft"]["p50_ms"] < (FIRST_S + SLACK_S) * 1000
    one, four = (level["metrics"]["output_throughput"] for level in report["levels"])
    assert four > 2 * one  # the fake serves requests in parallel
    table = capsys.readouterr().out
    assert "concurrency 4: 4 completed, 0 failed" in table
    assert "TTFT" in table and "goodput" in table


def test_bench_command_reports_errors_and_fails_when_nothing_completes(fake_server, capsys):
    status = main(["bench", "--base-url", fake_server, "--api-key", "wrong", "--model", "fake-model",
                   "--num-requests", "3", "--warmup", "0", "--no-progress"])
    assert status == 1
    out = capsys.readouterr().out
    assert "errors: HTTP 401 x3" in out
    assert "Incorrect API key provided." in out


def test_sse_lines_split_only_where_sse_ends_a_line():
    from shardserve.bench.client import sse_lines

    async def chunks():
        # U+2028, U+0085 and U+2029 inside generated text; CRLF split across chunks; CR alone.
        for text in ['data: {"t": "a\u2028b\x85c"}\r', '\n\ndata: {"t": "d\u2029"}\rdata: [DO', "NE]"]:
            yield text

    async def collect():
        return [line async for line in sse_lines(chunks())]

    lines = asyncio.run(collect())
    assert [line for line in lines if line] == ['data: {"t": "a\u2028b\x85c"}', 'data: {"t": "d\u2029"}', "data: [DONE]"]
