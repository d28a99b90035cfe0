"""No malformed request gets a 5xx: thousands of generated requests against
the real stack (the tools stack: tool calling on, a chat template of its
own), every one answered with a 2xx or an OpenAI-shaped 4xx in time, and the
server serves a normal request afterwards.

Two parts, both from the app's own OpenAPI document (GET /openapi.json):
- every field of every POST route's base bodies (fuzz.py) set to null, each
  JSON type its schema does not admit, out of range, empty and absurdly
  large: about 2,800 requests, the same each run;
- hypothesis: up to three fields set to values their schemas admit, or to
  any JSON value, FUZZ_EXAMPLES per route (derandomized: the same each run;
  set FUZZ_RANDOM=1 to explore).
"""

from __future__ import annotations

import collections
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Optional

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.integration.conftest import TOOL_CALLING
from tests.integration.fuzz import (
    BASES,
    RAW_BODIES,
    Case,
    body_schema,
    build_cases,
    check_response,
    encode,
    schema_values,
)
from tests.integration.stack import LocalStack

pytestmark = [pytest.mark.integration, pytest.mark.stacks(TOOL_CALLING)]

TIMEOUT_S = 60  # an answer later than this is a hang
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "150"))
EXPLORE = os.environ.get("FUZZ_RANDOM") == "1"
SEEN: collections.Counter[tuple[str, int]] = collections.Counter()


@pytest.fixture(scope="module")
def stack(tools_stack: LocalStack) -> LocalStack:
    return tools_stack


@pytest.fixture(scope="module")
def openapi(stack: LocalStack) -> dict[str, Any]:
    response = httpx.get(f"{stack.base_url}/openapi.json", timeout=TIMEOUT_S)
    response.raise_for_status()
    return response.json()


@dataclass
class Answer:
    status: int = 0
    problem: Optional[str] = None  # what is wrong with it, if anything
    error: str = ""  # a 4xx's param and message


def send(client: httpx.Client, path: str, body: Any) -> Answer:
    content = encode(body)
    streamed = isinstance(body, dict) and body.get("stream") is True
    try:
        response = client.post(path, content=content, headers={"Content-Type": "application/json"})
    except httpx.TimeoutException:
        return Answer(problem=f"no answer within {TIMEOUT_S} s")
    SEEN[(path, response.status_code)] += 1
    problem = check_response(response.status_code, response.content, streamed)
    error = ""
    if 400 <= response.status_code < 500 and problem is None:
        error = f"{response.json()['error'].get('param')} {response.json()['error']['message']}"
    return Answer(response.status_code, problem, error)


def names_the_field(case: Case, answer: Answer) -> bool:
    """Whether a 400's param or message names the changed field (its top-level name)."""
    top = case.field.split(".")[0].split("[")[0]
    return top in answer.error


def test_every_field_malformed_gets_a_4xx_never_a_5xx(stack, openapi):
    cases = build_cases(openapi) + [Case(path, "raw", "body", repr(raw), raw) for path in BASES for raw in RAW_BODIES]
    assert len(cases) > 2000
    with httpx.Client(base_url=stack.base_url, timeout=TIMEOUT_S) as client, ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda case: send(client, case.path, case.body), cases))
    problems = [(case.label, answer.problem) for case, answer in zip(cases, answers, strict=True) if answer.problem]
    assert problems == [], f"{len(problems)} of {len(cases)} requests:\n" + "\n".join(
        f"{label}: {problem}" for label, problem in problems[:40])
    refused = [(case, answer) for case, answer in zip(cases, answers, strict=True)
               if answer.status == 400 and case.base != "raw"]
    unnamed = [f"{case.label}: {answer.error[:120]}" for case, answer in refused if not names_the_field(case, answer)]
    print(f"\n{len(refused)} field changes refused with 400, {len(refused) - len(unnamed)} naming the field; "
          "not named:\n" + "\n".join(unnamed))


def _field_values(openapi: dict[str, Any], path: str) -> st.SearchStrategy[tuple[str, Any]]:
    """(field, value) with a value the field's schema admits, or any JSON value."""
    schema = body_schema(openapi, path) or {}
    components = openapi["components"]["schemas"]
    return st.one_of([st.tuples(st.just(field), schema_values(field_schema, components) | ANY_JSON)
                      for field, field_schema in sorted(schema.get("properties", {}).items())])


ANY_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=50),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=20,
)


@pytest.mark.parametrize("path", [path for path in BASES if path.startswith("/v1/c") or "tokenize" in path])
def test_schema_driven_random_requests_never_get_a_5xx(stack, openapi, path):
    base = BASES[path][0][1]
    problems: list[str] = []

    @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=not EXPLORE,
              suppress_health_check=list(HealthCheck))
    @given(st.lists(_field_values(openapi, path), min_size=1, max_size=3))
    def one_request(changes: list[tuple[str, Any]]) -> None:
        body = {**base, **dict(changes)}
        with httpx.Client(base_url=stack.base_url, timeout=TIMEOUT_S) as client:
            answer = send(client, path, body)
        if answer.problem:
            problems.append(f"{json.dumps(body, default=str)[:300]}: {answer.problem}")

    one_request()
    assert problems == [], f"{len(problems)} of {EXAMPLES} requests:\n" + "\n".join(problems[:20])


def test_afterwards_a_normal_request_is_served_and_health_is_ok(stack):
    health = httpx.get(f"{stack.base_url}/health", timeout=TIMEOUT_S)
    assert health.status_code == 200
    reply = httpx.post(f"{stack.base_url}/v1/chat/completions", timeout=TIMEOUT_S, json=BASES["/v1/chat/completions"][0][1])
    assert reply.status_code == 200 and reply.json()["choices"][0]["message"]["content"] is not None
    print("\nstatuses by route:", json.dumps({f"{path} {status}": n for (path, status), n in sorted(SEEN.items())}))
