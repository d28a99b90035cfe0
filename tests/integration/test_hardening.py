"""Hostile and malformed requests against the real local stack, with API keys.

One stack (`shardserve run`, tiny model) with keys from a file named by
SHARDSERVE_API_KEYS_FILE and small limits in spec.serving. Each row of CASES
is a bad request with the status and OpenAI error type it must get; after
them a normal request succeeds and /health is still 200. Then the auth cases:
no key, wrong key, the first key, a second key, and a rotated key file.
"""

import json

import httpx
import pytest

from tests.integration.conftest import StackKind, Stacks, write_spec
from tests.integration.polling import poll

APP = "hardening"
pytestmark = [pytest.mark.integration, pytest.mark.stacks(APP)]

KEY_1, KEY_2, KEY_NEW = "sk-first-0123456789", "sk-second-abcdef", "sk-rotated-zyxwvu"
MAX_BYTES = 64 * 1024
SERVING = {
    "maxOngoingRequests": 8, "maxQueuedRequests": 32, "requestTimeoutSeconds": 120,
    "apiKeySecret": "local-keys", "maxRequestBytes": MAX_BYTES, "maxTokens": 1000, "maxN": 4,
    "maxStopSequences": 2, "maxMessages": 8, "maxMessageChars": 4000,
}
AUTH = {"Authorization": f"Bearer {KEY_1}"}
CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"


def chat(**extra):
    return {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, **extra}


FUNCTION = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}


def nested_schema(levels):
    schema = {"type": "string"}
    for _ in range(levels):
        schema = {"type": "object", "properties": {"a": schema}}
    return schema


def completion(**extra):
    return {"model": "tiny", "prompt": "hello", "max_tokens": 4, **extra}


# (id, method, path, headers (None = AUTH), body: dict -> JSON | bytes -> raw, status, error type, param)
CASES = [
    ("no key", "POST", CHAT, {}, chat(), 401, "authentication_error", None),
    ("wrong key", "POST", CHAT, {"Authorization": "Bearer sk-wrong"}, chat(), 401, "authentication_error", None),
    ("basic scheme", "POST", CHAT, {"Authorization": f"Basic {KEY_1}"}, chat(), 401, "authentication_error", None),
    ("models without key", "GET", "/v1/models", {}, None, 401, "authentication_error", None),
    ("text/plain body", "POST", CHAT, {**AUTH, "Content-Type": "text/plain"}, b"hello", 415,
     "invalid_request_error", None),
    ("no content type", "POST", COMPLETIONS, {**AUTH, "Content-Type": ""}, b"{}", 415, "invalid_request_error", None),
    ("malformed JSON", "POST", CHAT, None, b'{"model": "tiny", "messages": [', 400, "invalid_request_error", None),
    ("JSON array body", "POST", CHAT, None, b"[1, 2]", 400, "invalid_request_error", None),
    ("max_tokens wrong type", "POST", COMPLETIONS, None, completion(max_tokens="ten"), 400,
     "invalid_request_error", "max_tokens"),
    ("messages missing", "POST", CHAT, None, {"model": "tiny"}, 400, "invalid_request_error", "messages"),
    ("unknown model", "POST", CHAT, None, chat(model="gpt-17"), 404, "not_found_error", None),
    ("body over maxRequestBytes", "POST", COMPLETIONS, None, completion(prompt="x" * (MAX_BYTES + 1)), 413,
     "invalid_request_error", None),
    ("n=10000", "POST", COMPLETIONS, None, completion(n=10000), 400, "invalid_request_error", "n"),
    ("best_of=100", "POST", COMPLETIONS, None, completion(best_of=100), 400, "invalid_request_error", "best_of"),
    ("max_tokens over maxTokens", "POST", COMPLETIONS, None, completion(max_tokens=5000), 400,
     "invalid_request_error", "max_tokens"),
    ("max_tokens negative", "POST", CHAT, None, chat(max_tokens=-1), 400, "invalid_request_error", "max_tokens"),
    ("prompt + max_tokens beyond context", "POST", COMPLETIONS, None, completion(max_tokens=900), 400,
     "invalid_request_error", None),
    ("temperature 5", "POST", CHAT, None, chat(temperature=5), 400, "invalid_request_error", "temperature"),
    ("top_p 2", "POST", CHAT, None, chat(top_p=2), 400, "invalid_request_error", "top_p"),
    ("logprobs 50", "POST", COMPLETIONS, None, completion(logprobs=50), 400, "invalid_request_error", "logprobs"),
    ("top_logprobs 50", "POST", CHAT, None, chat(logprobs=True, top_logprobs=50), 400, "invalid_request_error",
     "top_logprobs"),
    ("3 stop strings (maxStopSequences 2)", "POST", COMPLETIONS, None, completion(stop=["a", "b", "c"]), 400,
     "invalid_request_error", "stop"),
    ("10 stop strings (vLLM's cap, 4)", "POST", CHAT, None, chat(stop=[f"s{i}" for i in range(10)]), 400,
     "invalid_request_error", "stop"),
    ("5000-char stop string", "POST", COMPLETIONS, None, completion(stop=["y" * 5000]), 400,
     "invalid_request_error", "stop[0]"),
    ("20 messages", "POST", CHAT, None, chat(messages=[{"role": "user", "content": "hi"}] * 20), 400,
     "invalid_request_error", "messages"),
    ("5000-char message", "POST", CHAT, None, chat(messages=[{"role": "user", "content": "z" * 5000}]), 400,
     "invalid_request_error", "messages[0].content"),
    ("lone surrogate", "POST", CHAT, None, b'{"model": "tiny", "messages": [{"role": "user", "content": "\\ud800"}]}',
     400, "invalid_request_error", None),
    ("40 KB header", "POST", CHAT, {**AUTH, "X-Filler": "a" * 40_000}, chat(), 431, "invalid_request_error", None),
    ("unknown path", "GET", "/v1/nothing-here", None, None, 404, "not_found_error", None),
    ("GET on a POST route", "GET", CHAT, None, None, 405, "invalid_request_error", None),
    ("messages wrong type", "POST", CHAT, None, chat(messages="hi"), 400, "invalid_request_error", "messages"),
    ("JSON nested 30000 deep", "POST", COMPLETIONS, None,
     b'{"model": "tiny", "prompt": ' + b"[" * 30000 + b"]" * 30000 + b"}", 400, "invalid_request_error", None),
    ("a role no chat template knows", "POST", CHAT, None, chat(messages=[{"role": "wizard", "content": "hi"}]), 400,
     "invalid_request_error", "messages[0].role"),
    ("200 tools (maxTools 128)", "POST", CHAT, None, chat(tools=[FUNCTION] * 200), 400, "invalid_request_error",
     "tools"),
    ("a tool schema nested 40 deep", "POST", CHAT, None,
     chat(tools=[{"type": "function", "function": {"name": "f", "parameters": nested_schema(20)}}]), 400,
     "invalid_request_error", "tools[0].function.parameters"),
    ("tokenize without key", "POST", "/tokenize", {}, {"model": "tiny", "prompt": "hi"}, 401,
     "authentication_error", None),
    ("tokenize body over maxRequestBytes", "POST", "/tokenize", None, {"model": "tiny", "prompt": "x" * (MAX_BYTES + 1)},
     413, "invalid_request_error", None),
    ("embeddings of a generative model", "POST", "/v1/embeddings", None, {"model": "tiny", "input": "hi"}, 404,
     "not_found_error", None),
    ("stream with a wrong key", "POST", CHAT, {"Authorization": "Bearer sk-first-012345678"}, chat(stream=True),
     401, "authentication_error", None),
]


@pytest.fixture(scope="module")
def guarded(stacks: Stacks, tmp_path_factory):
    keys = tmp_path_factory.mktemp("keys") / "api-keys"
    keys.write_text(f"# two keys\n{KEY_1}\n{KEY_2}\n")
    stack = stacks.get(APP, StackKind(spec=lambda tmp: write_spec(tmp, APP, serving=SERVING),
                                      env={"SHARDSERVE_API_KEYS_FILE": str(keys)}))
    stack.keys_file = keys
    return stack


def send(stack, method, path, headers, body) -> httpx.Response:
    headers = dict(AUTH if headers is None else headers)
    if isinstance(body, dict):
        content = json.dumps(body).encode()
        headers.setdefault("Content-Type", "application/json")
    else:
        content = body
        if content is not None:
            headers.setdefault("Content-Type", "application/json")
    headers = {k: v for k, v in headers.items() if v != ""}
    return httpx.request(method, f"{stack.base_url}{path}", headers=headers, content=content, timeout=60)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_request_gets_a_clean_openai_error(guarded, case):
    name, method, path, headers, body, status, error_type, param = case
    response = send(guarded, method, path, headers, body)
    assert response.status_code == status, response.text[:500]
    error = response.json()["error"]
    assert error["type"] == error_type, error
    if param is not None:
        assert error["param"] == param, error
    text = response.text
    assert "Traceback" not in text and "File \"" not in text and "Exception" not in text, text[:500]
    if status == 401:
        assert response.headers["www-authenticate"] == "Bearer"
    print(f"\n  {name:36s} {status} {error_type:22s} {error.get('param') or '-':20s} {error['message'][:90]}")


def test_after_the_bad_requests_a_normal_request_succeeds_and_health_is_ok(guarded):
    response = send(guarded, "POST", CHAT, None, chat())
    assert response.status_code == 200, response.text[:500]
    assert response.json()["choices"][0]["message"]["content"] is not None
    assert httpx.get(f"{guarded.base_url}/health", timeout=10).status_code == 200


def test_health_needs_no_key(guarded):
    assert httpx.get(f"{guarded.base_url}/health", timeout=10).status_code == 200


@pytest.mark.parametrize("key", [KEY_1, KEY_2], ids=["first key", "second key"])
def test_each_configured_key_is_accepted(guarded, key):
    response = send(guarded, "POST", COMPLETIONS, {"Authorization": f"Bearer {key}"}, completion())
    assert response.status_code == 200, response.text[:500]


def test_a_rotated_key_file_applies_without_a_restart(guarded):
    guarded.keys_file.write_text(f"{KEY_NEW}\n")

    def old_key_refused() -> httpx.Response | None:
        response = send(guarded, "POST", COMPLETIONS, {"Authorization": f"Bearer {KEY_1}"}, completion())
        return response if response.status_code == 401 else None

    # The replica re-reads the file every second: the old key stops working within a few.
    old = poll(old_key_refused, 10, "the old key to be refused")
    assert old.json()["error"]["type"] == "authentication_error"
    new = send(guarded, "POST", COMPLETIONS, {"Authorization": f"Bearer {KEY_NEW}"}, completion())
    assert new.status_code == 200, new.text[:500]
