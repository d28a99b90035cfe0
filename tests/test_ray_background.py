"""benchmarks/ray_background.py pauses a server's processes off the request
path, and must always resume them."""

import importlib.util
import subprocess
import time
from pathlib import Path

import psutil
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "ray_background.py"
spec = importlib.util.spec_from_file_location("ray_background", SCRIPT)
ray_background = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ray_background)


@pytest.fixture
def session():
    """A session like a server's: one process on the request path, one off it."""
    leader = subprocess.Popen(["bash", "-c", "(exec -a VLLM::EngineCore sleep 60) & exec sleep 60"],
                              start_new_session=True)
    deadline = time.monotonic() + 10
    while len(psutil.Process(leader.pid).children()) < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    yield leader
    leader.kill()
    for child in psutil.Process(leader.pid).children():
        child.kill()
    leader.wait()


def _states(leader, expected):
    """(leader, engine) states, once they are `expected` or after 5 s (signals arrive asynchronously)."""
    engine = psutil.Process(leader.pid).children()[0]
    deadline = time.monotonic() + 5
    while True:
        states = psutil.Process(leader.pid).status(), engine.status()
        if states == expected or time.monotonic() > deadline:
            return states
        time.sleep(0.02)


def test_pauses_only_processes_off_the_request_path_and_resumes_them(session):
    with ray_background.ray_paused(session.pid) as count:
        assert count == 1
        stopped = (psutil.STATUS_STOPPED, psutil.STATUS_SLEEPING)
        assert _states(session, stopped) == stopped
    running = (psutil.STATUS_SLEEPING, psutil.STATUS_SLEEPING)
    assert _states(session, running) == running


def test_resumes_after_an_error(session):
    with pytest.raises(KeyboardInterrupt):
        with ray_background.ray_paused(session.pid):
            raise KeyboardInterrupt
    running = (psutil.STATUS_SLEEPING, psutil.STATUS_SLEEPING)
    assert _states(session, running) == running
