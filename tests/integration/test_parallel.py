"""Tensor parallel 2 and pipeline parallel 2 on CPU, through the Serve
application, return the same greedy tokens as a single worker."""

import pytest

from tests.integration.conftest import StackKind, Stacks, greedy_tokens, write_spec

LAYOUTS = {
    "tp2": {"tensor": 2, "pipeline": 1},
    "pp2": {"tensor": 1, "pipeline": 2},
}
# "tiny" first: these tests run right after test_openai_api, which reads the
# single worker's tokens (single_worker_tokens) while its stack runs.
pytestmark = [pytest.mark.integration, pytest.mark.stacks("tiny", *(f"par-{name}" for name in LAYOUTS))]


@pytest.fixture(scope="module", params=list(LAYOUTS))
def layout_stack(request, stacks: Stacks, single_worker_tokens):
    name = f"par-{request.param}"
    kind = StackKind(spec=lambda tmp: write_spec(tmp, name, parallelism=LAYOUTS[request.param]))
    return request.param, stacks.get(name, kind)


def test_greedy_tokens_match_single_worker(layout_stack, single_worker_tokens):
    name, stack = layout_stack
    assert f"tensor {LAYOUTS[name]['tensor']} x pipeline {LAYOUTS[name]['pipeline']}" in stack.log()
    assert greedy_tokens(stack) == single_worker_tokens
