"""The benchmark's HTTP side: streamed OpenAI completions and chat requests,
timed chunk by chunk, with tokens counted from the server's usage report."""

from __future__ import annotations

import json
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal, Optional

import httpx

from shardserve.bench.stats import RequestResult
from shardserve.bench.workload import RequestSpec

Api = Literal["completions", "chat"]
DONE = "[DONE]"
_DETAIL_CHARS = 300


@dataclass(frozen=True)
class Endpoint:
    """Where and how to send: an OpenAI-compatible base URL (ending in /v1)."""

    base_url: str
    model: str
    api: Api = "completions"
    api_key: Optional[str] = None
    ignore_eos: bool = False  # vLLM's extension: always generate max_tokens
    extra_body: dict[str, Any] = field(default_factory=dict)

    @property
    def url(self) -> str:
        path = "chat/completions" if self.api == "chat" else "completions"
        return f"{self.base_url.rstrip('/')}/{path}"


def build_headers(api_key: Optional[str]) -> dict[str, str]:
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    return headers


def build_payload(endpoint: Endpoint, spec: RequestSpec) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "model": endpoint.model,
        "max_tokens": spec.max_tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if endpoint.api == "chat":
        payload["messages"] = list(spec.messages) if spec.messages else [{"role": "user", "content": spec.prompt}]
    elif spec.prompt is None:
        raise ValueError("chat messages need the chat endpoint (--endpoint chat)")
    else:
        payload["prompt"] = spec.prompt
    if endpoint.ignore_eos:
        payload["ignore_eos"] = True
    payload.update(endpoint.extra_body)
    return payload


def parse_sse_data(line: str) -> Optional[str]:
    """The payload of an SSE `data:` line; None for comments, other fields and blank lines."""
    if not line.startswith("data:"):
        return None
    return line[5:].strip()


_SSE_LINE_END = re.compile(r"\r\n|\r|\n")


async def sse_lines(text_chunks: AsyncIterator[str]) -> AsyncIterator[str]:
    """The lines of an event stream, split only where SSE ends a line (CRLF, LF, CR).

    Not `httpx.aiter_lines`: it splits like `str.splitlines`, also at U+0085,
    U+2028 and U+2029, which JSON leaves unescaped inside generated text.
    (A CRLF split across two chunks yields one extra blank line: harmless,
    since only `data:` lines are read.)
    """
    pending = ""
    async for text in text_chunks:
        *lines, pending = _SSE_LINE_END.split(pending + text)
        for line in lines:
            yield line
    if pending:
        yield pending


def describe_error_body(body: bytes) -> str:
    """The server's message from an error body (OpenAI-shaped or not), shortened."""
    text = body.decode("utf-8", errors="replace")
    try:
        error = json.loads(text).get("error")
        if isinstance(error, dict) and error.get("message"):
            text = str(error["message"])
    except (ValueError, AttributeError):
        pass
    return text.strip()[:_DETAIL_CHARS]


async def send_request(client: httpx.AsyncClient, endpoint: Endpoint, spec: RequestSpec) -> RequestResult:
    """Sends one streamed request and times it; never raises for request failures."""
    result = RequestResult()
    payload = build_payload(endpoint, spec)
    headers = build_headers(endpoint.api_key)
    chunks = 0
    finished = False
    start = last = time.perf_counter()
    result.start_time = start
    try:
        async with client.stream("POST", endpoint.url, json=payload, headers=headers) as response:
            if response.status_code != 200:
                result.error = f"HTTP {response.status_code}"
                result.detail = describe_error_body(await response.aread())
                return result
            async for line in sse_lines(response.aiter_text()):
                data = parse_sse_data(line)
                if not data:
                    continue
                if data == DONE:
                    finished = True
                    break
                now = time.perf_counter()
                event = json.loads(data)
                if event.get("error"):
                    result.error = "error in stream"
                    result.detail = describe_error_body(data.encode())
                    return result
                if event.get("choices"):
                    if chunks == 0:
                        result.ttft = now - start
                    else:
                        result.itl.append(now - last)
                    chunks += 1
                    last = now
                usage = event.get("usage")
                if usage and usage.get("completion_tokens") is not None:
                    result.output_tokens = int(usage["completion_tokens"])
                    result.prompt_tokens = int(usage.get("prompt_tokens") or 0)
                    result.tokens_from_usage = True
    except httpx.HTTPError as err:
        result.error = type(err).__name__
        result.detail = str(err)[:_DETAIL_CHARS]
        return result
    except ValueError as err:  # a data line that is not JSON
        result.error = "invalid stream"
        result.detail = str(err)[:_DETAIL_CHARS]
        return result
    if not finished or chunks == 0:
        result.error = "stream ended early" if not finished else "no output"
        return result
    result.success = True
    result.latency = last - start
    if not result.tokens_from_usage:
        result.output_tokens = chunks
    return result


async def read_model_ids(client: httpx.AsyncClient, base_url: str, api_key: Optional[str]) -> list[str]:
    """The ids /v1/models lists (raises httpx.HTTPStatusError on an error answer)."""
    response = await client.get(f"{base_url.rstrip('/')}/models", headers=build_headers(api_key))
    response.raise_for_status()
    return [m["id"] for m in response.json().get("data", [])]
