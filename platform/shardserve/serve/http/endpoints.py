"""Which OpenAI routes a replica serves, decided by its model's tasks (pure).

vLLM knows what a loaded model can do: a generative model has the task
`generate`, an embedding model `embed`, a reranker `classify`, a speech
model `transcription`. A route whose task the model lacks answers 404 with a
message that says why, before its body is read; the rest go through the
same keys, limits, admission, timeouts and spans as chat.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Endpoint:
    name: str  # OpenAiIngress's method, and the operation on spans
    path: str
    tasks: frozenset[str]  # served when the model has any of these vLLM tasks; empty: always

    def served_for(self, model_tasks: Collection[str]) -> bool:
        return not self.tasks or bool(self.tasks & set(model_tasks))


def _endpoint(name: str, path: str, *tasks: str) -> Endpoint:
    return Endpoint(name, path, frozenset(tasks))


# The POST routes of Ray Serve LLM's OpenAiIngress. Scores come from an
# embedding model (cosine), a classifier (cross-encoder) or a late-interaction
# model, as vLLM's SCORE_TYPE_MAP says.
ENDPOINTS = (
    _endpoint("completions", "/v1/completions", "generate"),
    _endpoint("chat", "/v1/chat/completions", "generate"),
    _endpoint("embeddings", "/v1/embeddings", "embed"),
    _endpoint("score", "/v1/score", "embed", "classify", "token_embed"),
    _endpoint("transcriptions", "/v1/audio/transcriptions", "transcription"),
    _endpoint("tokenize", "/tokenize"),
    _endpoint("detokenize", "/detokenize"),
)


def served_paths(model_tasks: Collection[str], endpoints: Iterable[Endpoint] = ENDPOINTS) -> list[str]:
    return [endpoint.path for endpoint in endpoints if endpoint.served_for(model_tasks)]


def unsupported_message(endpoint: Endpoint, model_id: str, model_tasks: Collection[str]) -> str:
    tasks = ", ".join(sorted(model_tasks)) or "none"
    needs = " or ".join(sorted(endpoint.tasks))
    return (f"model '{model_id}' does not serve {endpoint.path}: it needs a model with the task {needs}, "
            f"and this model's tasks are {tasks}")
