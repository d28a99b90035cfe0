from pathlib import Path

import pytest
import yaml

from tests.integration.stack import LocalStack

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


def run_stack(spec_file: Path, log_dir: Path, env: dict | None = None, args: tuple[str, ...] = ()):
    """Starts a stack (with extra environment `env` and `shardserve run` arguments `args`);
    yields it; on teardown checks it stopped cleanly."""
    stack = LocalStack(spec_file, log_dir / f"{spec_file.stem}.log", env=env, args=args).start()
    yield stack
    status = stack.stop()
    assert status == 0, stack.log()[-3000:]
    assert stack.leftovers == [], f"processes left behind: {stack.leftovers}"
    assert "stopped" in stack.log()


@pytest.fixture(scope="module")
def tiny_stack(tmp_path_factory):
    """The example file itself (manifests/examples/tiny-cpu.yaml), served by `shardserve run`."""
    yield from run_stack(TINY, tmp_path_factory.mktemp("tiny"))


# The parallel layouts must return the single worker's greedy tokens. The
# example file is that single worker; test_openai_api records its tokens
# here while it serves, so test_parallel need not start it again.
PARALLEL_PROMPTS = ["The river", "Once upon a time", "Hello world, this is", "12345"]
single_worker_tokens: list[list[int]] = []


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

