"""Cold start: phases from marks (consecutive, folded when a mark is missing),
the weight-load times vLLM's processes leave, and one start's record."""

import os
from types import SimpleNamespace

import pytest

from shardserve.api.contract import WEIGHT_LOAD_FILE_ENV
from shardserve.local.status import build_status_row, format_status
from shardserve.serve.telemetry import cold_start as cold_start_module
from shardserve.serve.telemetry.cold_start import (
    MODEL_FETCHED_KEY,
    PHASES,
    TOTAL,
    ColdStart,
    ColdStartMarks,
    compute_phases,
    format_phases,
)
from shardserve.serve.telemetry.weight_load import append_weight_load, read_weight_load, record_weight_load


def test_phases_are_consecutive_and_add_up():
    marks = ColdStartMarks(started=100.0, model_fetched=102.0, weights_loaded=110.0, engine_started=140.0, ready=141.5)
    assert compute_phases(marks) == {"model_fetch": 2.0, "weight_load": 8.0, "engine_start": 30.0, "first_ready": 1.5}
    assert list(compute_phases(marks)) == list(PHASES)


def test_a_missing_mark_folds_its_phase_into_the_next():
    marks = ColdStartMarks(started=100.0, model_fetched=102.0, weights_loaded=None, engine_started=140.0, ready=141.0)
    assert compute_phases(marks) == {"model_fetch": 2.0, "engine_start": 38.0, "first_ready": 1.0}
    # Clocks of different processes may disagree by a little: never a negative phase.
    skewed = ColdStartMarks(started=100.0, model_fetched=102.0, weights_loaded=101.9, engine_started=140.0)
    assert compute_phases(skewed) == {"model_fetch": 2.0, "weight_load": 0.0, "engine_start": 38.0}


def test_weight_load_times_from_every_engine_process(tmp_path):
    path = str(tmp_path / "loads.jsonl")
    assert read_weight_load(path) is None
    append_weight_load(path, 10.0, 14.0)  # rank 0
    append_weight_load(path, 10.5, 15.0)  # rank 1
    assert read_weight_load(path) == (10.0, 15.0)


def test_plugin_times_the_model_loader_only_when_asked(tmp_path, monkeypatch):
    from vllm.model_executor.model_loader.base_loader import BaseModelLoader

    original = BaseModelLoader.load_model
    monkeypatch.setattr(BaseModelLoader, "load_model", original)  # restored after the test
    monkeypatch.delenv(WEIGHT_LOAD_FILE_ENV, raising=False)
    record_weight_load()
    assert BaseModelLoader.load_model is original

    path = tmp_path / "loads.jsonl"
    monkeypatch.setenv(WEIGHT_LOAD_FILE_ENV, str(path))
    calls = []
    monkeypatch.setattr(BaseModelLoader, "load_model", lambda self, *a, **k: calls.append(a) or "model")
    record_weight_load()
    record_weight_load()  # vLLM may load plugins twice: wrap once

    class Loader(BaseModelLoader):
        def download_model(self, model_config):
            pass

        def load_weights(self, model, model_config):
            pass

    assert Loader(load_config=None).load_model("vllm_config", "model_config") == "model"
    assert calls == [("vllm_config", "model_config")]
    (start, end) = read_weight_load(str(path))
    assert start <= end


def test_one_start_is_recorded_with_every_phase(tmp_path, monkeypatch):
    recorded = {}
    monkeypatch.setattr(ColdStart, "_record_metric", lambda self, phases: recorded.update(metric=phases))
    monkeypatch.setattr(ColdStart, "_publish", lambda self, phases: recorded.update(status=phases))
    monkeypatch.setattr(cold_start_module, "tracing_enabled", lambda: False)
    start = ColdStart("tiny", "app", "llm", "r1")
    start.started -= 10  # a start that began ten seconds ago
    file = start.weight_load_file
    assert os.environ[WEIGHT_LOAD_FILE_ENV] == file  # inherited by the engine processes the replica starts
    append_weight_load(file, start.started + 1.0, start.started + 2.0)
    callback = SimpleNamespace(ctx=SimpleNamespace(custom_data={MODEL_FETCHED_KEY: start.started + 0.5}))
    start.engine_started(SimpleNamespace(get_or_create_callback=lambda: callback))
    assert WEIGHT_LOAD_FILE_ENV not in os.environ and not os.path.exists(file)
    phases = start.ready()
    assert list(phases) == [*PHASES, TOTAL]
    assert phases["model_fetch"] == pytest.approx(0.5) and phases["weight_load"] == pytest.approx(1.5)
    assert sum(phases[p] for p in PHASES) == pytest.approx(phases[TOTAL]) == pytest.approx(10, abs=1)
    assert recorded == {"metric": phases, "status": phases}


def test_status_shows_the_last_start():
    row = build_status_row("tiny", {"status": "RUNNING"}, {"replicas": [{"state": "RUNNING"}], "target_num_replicas": 1},
                           None, {"phases": {"model_fetch": 14.3, "weight_load": 20.5, "engine_start": 19.3,
                                             "first_ready": 0.7, "total": 54.9}})
    assert format_status([row]).splitlines()[1] == (
        "  last replica start: model_fetch 14.3s, weight_load 20.5s, engine_start 19.3s, first_ready 0.7s (total 54.9s)")
    assert format_phases({"model_fetch": 1.0, "engine_start": 2.0}) == "model_fetch 1.0s, engine_start 2.0s (total 3.0s)"
