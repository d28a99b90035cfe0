"""Tensor parallel 2 and pipeline parallel 2 on CPU, through the Serve
application, return the same greedy tokens as a single worker."""

import openai
import pytest

from tests.integration.conftest import run_stack, write_spec

pytestmark = pytest.mark.integration

PROMPTS = ["The river", "Once upon a time", "Hello world, this is", "12345"]
LAYOUTS = {
    "single": {"tensor": 1, "pipeline": 1},
    "tp2": {"tensor": 2, "pipeline": 1},
    "pp2": {"tensor": 1, "pipeline": 2},
}
greedy_tokens: dict[str, list[list[int]]] = {}


# Module scope with params: pytest stops one layout's stack before it starts
# the next, so only one local Ray runs at a time.
@pytest.fixture(scope="module", params=list(LAYOUTS))
def layout_stack(request, tmp_path_factory):
    tmp = tmp_path_factory.mktemp(request.param)
    spec = write_spec(tmp, f"par-{request.param}", parallelism=LAYOUTS[request.param])
    for stack in run_stack(spec, tmp):
        yield request.param, stack


def generate(stack) -> list[list[int]]:
    client = openai.OpenAI(base_url=f"{stack.base_url}/v1", api_key="unused", max_retries=0, timeout=60)
    out = []
    for prompt in PROMPTS:
        reply = client.completions.create(
            model="tiny", prompt=prompt, max_tokens=16, temperature=0, extra_body={"return_token_ids": True, "ignore_eos": True}
        )
        choice = reply.choices[0]
        token_ids = choice.model_extra.get("token_ids")
        assert token_ids and len(token_ids) == 16
        out.append(token_ids)
    return out


def test_greedy_tokens_match_single_worker(layout_stack):
    name, stack = layout_stack
    assert f"tensor {LAYOUTS[name]['tensor']} x pipeline {LAYOUTS[name]['pipeline']}" in stack.log()
    greedy_tokens[name] = generate(stack)
    if name == "single":
        return
    assert "single" in greedy_tokens, "the single-worker layout runs first and records the reference"
    assert greedy_tokens[name] == greedy_tokens["single"]
