"""Tensor parallel 2 and pipeline parallel 2 on CPU, through the Serve
application, return the same greedy tokens as a single worker."""

import pytest

from tests.integration.conftest import TINY, greedy_tokens, run_stack, single_worker_tokens, write_spec

pytestmark = pytest.mark.integration

LAYOUTS = {
    "tp2": {"tensor": 2, "pipeline": 1},
    "pp2": {"tensor": 1, "pipeline": 2},
}


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> list[list[int]]:
    """The single worker's tokens: recorded by test_openai_api, else from a stack of its own."""
    if not single_worker_tokens:
        for stack in run_stack(TINY, tmp_path_factory.mktemp("single")):
            single_worker_tokens[:] = greedy_tokens(stack)
    return list(single_worker_tokens)


# Module scope with params: pytest stops one layout's stack before it starts
# the next, so only one local Ray runs at a time.
@pytest.fixture(scope="module", params=list(LAYOUTS))
def layout_stack(request, tmp_path_factory, reference):
    tmp = tmp_path_factory.mktemp(request.param)
    spec = write_spec(tmp, f"par-{request.param}", parallelism=LAYOUTS[request.param])
    for stack in run_stack(spec, tmp):
        yield request.param, stack


def test_greedy_tokens_match_single_worker(layout_stack, reference):
    name, stack = layout_stack
    assert f"tensor {LAYOUTS[name]['tensor']} x pipeline {LAYOUTS[name]['pipeline']}" in stack.log()
    assert greedy_tokens(stack) == reference
