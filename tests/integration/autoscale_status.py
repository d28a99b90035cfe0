"""`shardserve status APP --json` as the autoscaling tests read it."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable

from tests.integration.polling import poll
from tests.integration.stack import shardserve_command

STATUS_INTERVAL_S = 3.0


def read_status(app: str) -> dict:
    with subprocess.Popen([*shardserve_command(), "status", app, "--json"], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True) as proc:
        try:
            out, err = proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            # Seen once on a loaded machine: the whole answer printed, then no exit. The
            # answer is what these tests read; the hang is reported, not hidden.
            print(f"\nshardserve status did not exit within 120 s; it printed {len(out)} characters")
        else:
            assert proc.returncode == 0, err[-2000:]
    [row] = json.loads(out)
    return row


def wait_for_status(app: str, predicate: Callable[[dict], bool], timeout_s: float, what: str,
                    seen: list | None = None) -> tuple[float, dict]:
    """Reads the status until predicate(row) holds, with a deadline; every row read goes
    to `seen`. Returns the seconds it took and the row."""
    started = time.monotonic()

    def check() -> dict | None:
        row = read_status(app)
        if seen is not None:
            seen.append(row)
        return row if predicate(row) else None

    # Each read starts a Python process that connects to Ray: a few seconds of
    # a core, which the stack needs more.
    row = poll(check, timeout_s, what, interval_s=STATUS_INTERVAL_S)
    return time.monotonic() - started, row
