"""Local stacks for the integration tests: one at a time, each shared by the
modules that need the same one.

A module names the stacks it uses with `pytest.mark.stacks(...)` and gets one
with `stacks.get(kind)`. `Stacks` stops the stack running before it starts
another, so only one local Ray runs at a time; the modules are ordered so
that those sharing a stack run one after another, and a stack is stopped as
soon as the next test does not name it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import pytest
import yaml

from tests.integration.otlp_receiver import OtlpReceiver
from tests.integration.stack import LocalStack, free_port

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "manifests" / "examples" / "tiny-cpu.yaml"
# The tiny model with a batch of 2: a few concurrent requests already queue.
SMALL_BATCH_ENGINE = {"maxModelLen": 256, "dtype": "float32", "kvCacheMemory": "256Mi", "maxNumSeqs": 2}


def write_spec(tmp_dir: Path, name: str, **spec_changes) -> Path:
    doc = yaml.safe_load(TINY.read_text())
    doc["metadata"]["name"] = name
    for key, value in spec_changes.items():
        doc["spec"][key] = value
    path = tmp_dir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


@dataclass(frozen=True)
class StackKind:
    """How to run one kind of stack: its spec file (written into a directory),
    extra environment and `shardserve run` arguments."""

    spec: Callable[[Path], Path]
    env: dict[str, str] = field(default_factory=dict)
    args: tuple[str, ...] = ()


class Stacks:
    """The running stack and its kind; starting another stops it first."""

    def __init__(self, tmp_path_factory: pytest.TempPathFactory):
        self._tmp = tmp_path_factory
        self.kind: Optional[str] = None
        self.stack: Optional[LocalStack] = None

    def get(self, kind: str, how: StackKind) -> LocalStack:
        if self.kind == kind and self.stack is not None:
            return self.stack
        self.stop()
        tmp = self._tmp.mktemp(kind)
        spec_file = how.spec(tmp)
        stack = LocalStack(spec_file, tmp / f"{spec_file.stem}.log", env=how.env or None, args=how.args)
        self.kind = kind
        self.stack = stack.start()
        return self.stack

    def stop(self) -> None:
        """Stops the running stack, if any, and checks it stopped cleanly."""
        stack, self.stack, self.kind = self.stack, None, None
        if stack is None or stack.process is None:
            return
        status = stack.stop()
        assert status == 0, stack.log()[-3000:]
        assert stack.leftovers == [], f"processes left behind: {stack.leftovers}"
        assert "stopped" in stack.log()


_STACKS = pytest.StashKey[Stacks]()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "stacks(*kinds): the local stacks a module's tests use (see tests/integration)")


def stack_kinds(item: Optional[pytest.Item]) -> tuple[str, ...]:
    marker = item.get_closest_marker("stacks") if item is not None else None
    return marker.args if marker is not None else ()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Modules that share their first stack run one after another (otherwise in
    the order collected), so each stack starts once."""
    first_seen: dict[str, int] = {}
    for i, item in enumerate(items):
        kinds = stack_kinds(item)
        if kinds:
            first_seen.setdefault(kinds[0], i)
    positions = [i for i, item in enumerate(items) if stack_kinds(item)]
    grouped = sorted(positions, key=lambda i: (first_seen[stack_kinds(items[i])[0]], i))
    moved = [items[i] for i in grouped]
    for position, item in zip(positions, moved, strict=True):
        items[position] = item


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: Optional[pytest.Item]):
    """Stops the running stack once the next test does not use it: before the
    fixtures go (the trace receiver must outlive the stack), and still tearing
    them down if the stop fails its checks."""
    stacks = item.config.stash.get(_STACKS, None)
    failed: Optional[BaseException] = None
    if stacks is not None and stacks.kind is not None and stacks.kind not in stack_kinds(nextitem):
        try:
            stacks.stop()
        except BaseException as err:
            failed = err
    result = yield
    if failed is not None:
        raise failed
    return result


def pytest_sessionfinish(session: pytest.Session) -> None:
    stacks = session.config.stash.get(_STACKS, None)
    if stacks is not None and stacks.stack is not None:
        stacks.stack.stop()  # an interrupted run: no checks, just no stack left running


@pytest.fixture(scope="session")
def stacks(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Stacks:
    return request.config.stash.setdefault(_STACKS, Stacks(tmp_path_factory))


# ------------------------------------------------------------------ shared stacks

TINY_STACK = StackKind(spec=lambda _tmp: TINY)


@pytest.fixture(scope="module")
def tiny_stack(stacks: Stacks) -> LocalStack:
    """The example file itself (manifests/examples/tiny-cpu.yaml), served by `shardserve run`."""
    return stacks.get("tiny", TINY_STACK)


@pytest.fixture(scope="session")
def otlp_receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as receiver:
        yield receiver


SMALL_QUEUE = "small-queue"


@dataclass(frozen=True)
class SmallQueue:
    stack: LocalStack
    receiver: OtlpReceiver
    metrics_url: str


@pytest.fixture(scope="session")
def small_queue_kind(otlp_receiver: OtlpReceiver) -> StackKind:
    """The tiny model with a batch of 2 and a small queue (2 running, 2 queued), so a
    burst gets 429s; tracing to `otlp_receiver`, metrics on a port of its own."""
    return StackKind(
        spec=lambda tmp: write_spec(
            tmp, SMALL_QUEUE,
            engine=SMALL_BATCH_ENGINE,
            serving={"maxOngoingRequests": 2, "maxQueuedRequests": 2, "requestTimeoutSeconds": 120},
            telemetry={"tracing": {"endpoint": otlp_receiver.endpoint}},
        ),
        # Export spans and metrics every fraction of a second instead of every 5-10 s.
        env={"OTEL_BSP_SCHEDULE_DELAY": "200", "RAY_metrics_report_interval_ms": "1000"},
        args=("--metrics-port", str(free_port())),
    )


@pytest.fixture(scope="module")
def small_queue(stacks: Stacks, small_queue_kind: StackKind, otlp_receiver: OtlpReceiver) -> SmallQueue:
    metrics_port = small_queue_kind.args[1]
    return SmallQueue(stacks.get(SMALL_QUEUE, small_queue_kind), otlp_receiver,
                      f"http://127.0.0.1:{metrics_port}/metrics")


TOOL_CALLING = "tools"
# A template that lists the tools by name: the override shows in the prompt tokens.
TOOLS_TEMPLATE = (
    "{{ bos_token }}{% if tools %}<|tools|>\n{% for t in tools %}{{ t['function']['name'] }}: "
    "{{ t['function']['description'] }}\n{% endfor %}{% endif %}"
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] or '' }}{{ eos_token }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def _tools_spec(tmp: Path) -> Path:
    (tmp / "chat.jinja").write_text(TOOLS_TEMPLATE)
    # xlam: a JSON tool format vLLM constrains with a JSON schema. For parsers
    # it constrains with structural tags (hermes, llama3_json, ...), vLLM
    # 0.29 builds the grammar without the compact-JSON switch, and a random
    # model fills it with whitespace (docs/serving.md).
    return write_spec(tmp, "tools", chat={"template": {"file": "chat.jinja"}, "toolCalling": {"parser": "xlam"}},
                      engine={"maxModelLen": 1024, "dtype": "float32", "kvCacheMemory": "256Mi"},
                      serving={"maxTokens": 128})


@pytest.fixture(scope="module")
def tools_stack(stacks: Stacks) -> LocalStack:
    """Tool calling (parser xlam) and a chat template of its own: test_tools and test_fuzz."""
    return stacks.get(TOOL_CALLING, StackKind(spec=_tools_spec))


# ------------------------------------------------------------------ the single worker's tokens

# The parallel layouts must return the single worker's greedy tokens: the
# example file's, read once while its stack runs.
PARALLEL_PROMPTS = ["The river", "Once upon a time", "Hello world, this is", "12345"]


@pytest.fixture(scope="session")
def single_worker_tokens(stacks: Stacks) -> list[list[int]]:
    return greedy_tokens(stacks.get("tiny", TINY_STACK))


def greedy_tokens(stack, prompts=PARALLEL_PROMPTS, max_tokens: int = 16) -> list[list[int]]:
    import openai

    client = openai.OpenAI(base_url=f"{stack.base_url}/v1", api_key="unused", max_retries=0, timeout=60)
    out = []
    for prompt in prompts:
        reply = client.completions.create(
            model="tiny", prompt=prompt, max_tokens=max_tokens, temperature=0,
            extra_body={"return_token_ids": True, "ignore_eos": True},
        )
        token_ids = reply.choices[0].model_extra.get("token_ids")
        assert token_ids and len(token_ids) == max_tokens, reply
        out.append(token_ids)
    return out
