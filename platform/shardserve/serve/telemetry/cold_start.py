"""A model replica's start, in phases, so a slow start can be explained.

    model_fetch   replica constructor -> weights on local disk (a builtin model
                  is built, a remote one downloaded by Ray Serve LLM)
    weight_load   -> weights in the engine's memory (starts vLLM's processes)
    engine_start  -> engine accepting requests (KV cache, profiling, compile
                  and warm-up, the OpenAI serving state)
    first_ready   -> the replica's first passing health check: Serve has
                  marked it running and routes requests to it

Phases are consecutive, so they add up to the total. Time before the replica
constructor (scheduling, the actor's process) is Serve's
serve_replica_startup_latency_ms minus this total.

Each start is recorded three ways: the `shardserve_cold_start_seconds`
histogram (by phase, and "total"), events on a `shardserve.cold_start` span
(vLLM's own start spans - model load, warm-up - nest under it), and the latest
start per deployment in Ray's key-value store for `shardserve status`.

The weight load happens in vLLM's engine processes, timed there by a vLLM
plugin (weight_load.py); without its times, weight_load is folded into
engine_start.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

from ray.util.metrics import Histogram

from shardserve.api.contract import KV_NAMESPACE, WEIGHT_LOAD_FILE_ENV, cold_start_key
from shardserve.serve.ray_private import CallbackBase, kv_put
from shardserve.serve.telemetry.tracing import get_tracer, tracing_enabled
from shardserve.serve.telemetry.weight_load import read_weight_load

if TYPE_CHECKING:  # ray.serve.llm loads vLLM; `shardserve status` imports this module
    from ray.serve.llm import LLMConfig

logger = logging.getLogger(__name__)

PHASES = ("model_fetch", "weight_load", "engine_start", "first_ready")
TOTAL = "total"
EVENTS = {"model_fetch": "model_fetched", "weight_load": "weights_loaded",
          "engine_start": "engine_started", "first_ready": "ready"}
SPAN_NAME = "shardserve.cold_start"
MODEL_FETCHED_KEY = "shardserve_model_fetched_at"
METRIC = "shardserve_cold_start_seconds"
BUCKETS_S = [0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 1800, 3600]


@dataclass(frozen=True)
class ColdStartMarks:
    """Wall-clock times (seconds since the epoch) the replica saw each step end."""

    started: float
    model_fetched: Optional[float] = None
    weights_loaded: Optional[float] = None
    engine_started: Optional[float] = None
    ready: Optional[float] = None

    def end_of(self, phase: str) -> Optional[float]:
        return {"model_fetch": self.model_fetched, "weight_load": self.weights_loaded,
                "engine_start": self.engine_started, "first_ready": self.ready}[phase]


def compute_phases(marks: ColdStartMarks) -> dict[str, float]:
    """Seconds per phase, in order; a phase whose end is unknown is folded into the next."""
    phases: dict[str, float] = {}
    previous = marks.started
    for phase in PHASES:
        end = marks.end_of(phase)
        if end is None:
            continue
        phases[phase] = max(0.0, end - previous)
        previous = max(previous, end)
    return phases


def format_phases(phases: dict[str, float]) -> str:
    """'model_fetch 2.1s, weight_load 6.0s, engine_start 30.2s, first_ready 0.4s (total 38.7s)'."""
    parts = ", ".join(f"{name} {seconds:.1f}s" for name, seconds in phases.items() if name != TOTAL)
    return f"{parts} (total {phases.get(TOTAL, sum(phases.values())):.1f}s)"


class ColdStartCallback(CallbackBase):
    """Ray Serve LLM calls this around node initialisation, which downloads a
    remote model's files; its end is the end of model_fetch."""

    async def on_after_node_init(self) -> None:
        self.ctx.custom_data[MODEL_FETCHED_KEY] = time.time()


def read_model_fetched(llm_config: LLMConfig) -> Optional[float]:
    try:
        callback = llm_config.get_or_create_callback()
        return callback.ctx.custom_data.get(MODEL_FETCHED_KEY) if callback is not None else None
    except Exception:  # another callback class
        return None


class ColdStart:
    """One replica's start: marks, its span, and at the end the metric and status record."""

    _histogram: Any = None

    def __init__(self, model: str, app: str, deployment: str, replica: str):
        self.model, self.app, self.deployment, self.replica = model, app, deployment, replica
        self.started = time.time()
        self.span = None
        if tracing_enabled():
            self.span = get_tracer().start_span(SPAN_NAME, start_time=int(self.started * 1e9), attributes={
                "gen_ai.request.model": model, "shardserve.replica": replica,
                "shardserve.application": app, "shardserve.deployment": deployment})
        fd, self.weight_load_file = tempfile.mkstemp(prefix="shardserve-weights-", suffix=".jsonl")
        os.close(fd)
        os.environ[WEIGHT_LOAD_FILE_ENV] = self.weight_load_file
        self.marks = ColdStartMarks(self.started)

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        """The start span as the current span: vLLM's start spans become its children."""
        if self.span is None:
            yield
            return
        from opentelemetry import trace

        with trace.use_span(self.span, end_on_exit=False, record_exception=False, set_status_on_exception=False):
            yield

    def engine_started(self, llm_config: LLMConfig) -> None:
        """After the engine started: collect the marks the callback and the plugin left."""
        loaded = read_weight_load(self.weight_load_file)
        self._forget_weight_load_file()
        self.marks = ColdStartMarks(self.started, model_fetched=read_model_fetched(llm_config),
                                    weights_loaded=loaded[1] if loaded else None, engine_started=time.time())
        if self.span is not None:
            for phase in ("model_fetch", "weight_load", "engine_start"):
                end = self.marks.end_of(phase)
                if end is not None:
                    extra = {"weight_load_seconds": loaded[1] - loaded[0]} if phase == "weight_load" and loaded else {}
                    self.span.add_event(EVENTS[phase], attributes=extra, timestamp=int(end * 1e9))

    def ready(self) -> dict[str, float]:
        """The first passing health check: the start is over."""
        now = time.time()
        self.marks = dataclasses.replace(self.marks, ready=now)
        phases = compute_phases(self.marks)
        phases[TOTAL] = sum(phases.values())  # consecutive phases: ready - started
        if self.span is not None:
            self.span.add_event(EVENTS["first_ready"], timestamp=int(now * 1e9))
            self.span.set_attributes({f"shardserve.cold_start.{k}_seconds": round(v, 3) for k, v in phases.items()})
            self.span.end(end_time=int(now * 1e9))
        self._record_metric(phases)
        self._publish(phases)
        logger.info("replica %s started: %s", self.replica, format_phases(phases))
        return phases

    def failed(self, exc: BaseException) -> None:
        self._forget_weight_load_file()
        if self.span is not None:
            from opentelemetry.trace import Status, StatusCode

            self.span.record_exception(exc)
            self.span.set_status(Status(StatusCode.ERROR, str(exc)[:500]))
            self.span.end()

    def _forget_weight_load_file(self) -> None:
        if os.environ.get(WEIGHT_LOAD_FILE_ENV) == self.weight_load_file:
            del os.environ[WEIGHT_LOAD_FILE_ENV]
        try:
            os.unlink(self.weight_load_file)
        except OSError:
            pass

    def _record_metric(self, phases: dict[str, float]) -> None:
        if ColdStart._histogram is None:
            ColdStart._histogram = Histogram(
                METRIC, "Seconds a model replica took to start, by phase (model_fetch, weight_load, "
                "engine_start, first_ready) and in total.", boundaries=BUCKETS_S,
                tag_keys=("application", "model", "phase"))
        for phase, seconds in phases.items():
            ColdStart._histogram.observe(seconds, tags={"application": self.app, "model": self.model, "phase": phase})

    def _publish(self, phases: dict[str, float]) -> None:
        record = {"replica": self.replica, "at": self.marks.ready, "phases": {k: round(v, 2) for k, v in phases.items()}}
        try:
            kv_put(cold_start_key(self.app, self.deployment), json.dumps(record), KV_NAMESPACE)
        except Exception as err:  # status is informative; never fail a replica for it
            logger.warning("could not publish the cold start: %r", err)

