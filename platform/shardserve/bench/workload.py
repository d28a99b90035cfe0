"""What to send and when (pure, seeded): prompts of random length or from a
JSONL file, and arrival times at a fixed rate (Poisson or gamma)."""

from __future__ import annotations

import itertools
import json
import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

# Seconds one request may take before it counts as failed.
DEFAULT_TIMEOUT_S = 600.0

# Plain words, so any tokenizer sees ordinary text; about one token per word
# for most tokenizers. The server's usage reports the real prompt length.
_WORDS = (
    "the of and to in is was for on that with as by at from his her they this have are which one had not but "
    "what all were when we there can an your more if will out so up said about many then them would like "
    "time these two may first water been call who oil its now find long down day did get come made part over "
    "new sound take only little work know place year live back give most very after thing our just name good "
    "sentence man think say great where help through much before line right too mean old any same tell boy "
    "follow came want show also around form three small set put end does another well large must big even "
    "such because turn here why ask went men read need land different home us move try kind hand picture "
    "again change off play spell air away animal house point page letter mother answer found study still "
    "learn should world high every near add food between own below country plant last school father keep tree "
    "never start city earth eye light thought head under story saw left few while along might close something "
    "seem next hard open example begin life always those both paper together got group often run important "
    "until children side feet car mile night walk white sea began grow took river four carry state once book "
    "hear stop without second later miss idea enough eat face watch far indian real almost let above girl "
    "sometimes mountain cut young talk soon list song being leave family river music color stand sun question"
).split()


@dataclass(frozen=True)
class RequestSpec:
    """One request's content: a prompt (completions; chat wraps it as a user
    message) or chat messages, and the number of tokens to generate."""

    max_tokens: int
    prompt: Optional[str] = None
    messages: Optional[tuple[dict[str, Any], ...]] = None


class WorkloadError(ValueError):
    """A prompt file or length setting that cannot be used; the message says where."""


def build_length_range(mean: int, range_ratio: float) -> tuple[int, int]:
    """[mean*(1-r), mean*(1+r)], as vLLM's random dataset draws lengths; at least 1."""
    if mean < 1:
        raise WorkloadError(f"length must be at least 1, got {mean}")
    if not 0.0 <= range_ratio < 1.0:
        raise WorkloadError(f"range ratio must be within [0, 1), got {range_ratio}")
    return max(1, math.floor(mean * (1 - range_ratio))), max(1, math.ceil(mean * (1 + range_ratio)))


def iter_random_requests(input_len: int, output_len: int, range_ratio: float, rng: random.Random) -> Iterator[RequestSpec]:
    """Endless requests: prompts of uniformly drawn word counts, outputs of drawn lengths.

    Each prompt starts with a distinct number, so a server's prefix cache
    cannot reuse one request's work for the next.
    """
    in_low, in_high = build_length_range(input_len, range_ratio)
    out_low, out_high = build_length_range(output_len, range_ratio)
    for i in itertools.count():
        words = [str(i)] + rng.choices(_WORDS, k=rng.randint(in_low, in_high) - 1)
        yield RequestSpec(prompt=" ".join(words), max_tokens=rng.randint(out_low, out_high))


def parse_jsonl_requests(text: str, default_max_tokens: int, source: str = "prompts") -> list[RequestSpec]:
    """One JSON object per line: {"prompt": str} or {"messages": [...]}, optionally "max_tokens"."""
    specs = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{source}:{number}"
        try:
            item = json.loads(line)
        except ValueError as err:
            raise WorkloadError(f"{where}: not JSON ({err})") from None
        if not isinstance(item, dict) or ("prompt" in item) == ("messages" in item):
            raise WorkloadError(f"{where}: expected an object with exactly one of 'prompt' or 'messages'")
        max_tokens = item.get("max_tokens", default_max_tokens)
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
            raise WorkloadError(f"{where}: max_tokens must be a positive integer")
        if "prompt" in item:
            if not isinstance(item["prompt"], str):
                raise WorkloadError(f"{where}: prompt must be a string")
            specs.append(RequestSpec(prompt=item["prompt"], max_tokens=max_tokens))
        else:
            messages = item["messages"]
            if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
                raise WorkloadError(f"{where}: messages must be a non-empty list of objects")
            specs.append(RequestSpec(messages=tuple(messages), max_tokens=max_tokens))
    if not specs:
        raise WorkloadError(f"{source}: no requests")
    return specs


def read_jsonl_requests(path: Path, default_max_tokens: int) -> list[RequestSpec]:
    return parse_jsonl_requests(Path(path).read_text(), default_max_tokens, source=str(path))


def iter_file_requests(specs: Sequence[RequestSpec], rng: random.Random, shuffle: bool = False) -> Iterator[RequestSpec]:
    """The file's requests in order (or shuffled), repeated as often as needed."""
    order = list(specs)
    while True:
        if shuffle:
            rng.shuffle(order)
        yield from order


def iter_arrival_offsets(rate: float, burstiness: float, rng: random.Random) -> Iterator[float]:
    """Send times, seconds after the start, for requests arriving at `rate` per second.

    Gaps are gamma-distributed with shape `burstiness` and mean 1/rate, as in
    vLLM's benchmark: burstiness 1 is a Poisson process, below 1 burstier,
    above 1 more even. An infinite rate sends everything at once.
    """
    if not rate > 0:
        raise WorkloadError(f"request rate must be positive, got {rate}")
    if not burstiness > 0:
        raise WorkloadError(f"burstiness must be positive, got {burstiness}")
    offset = 0.0
    while True:
        yield offset
        if math.isinf(rate):
            continue
        offset += rng.gammavariate(burstiness, 1.0 / (rate * burstiness))
