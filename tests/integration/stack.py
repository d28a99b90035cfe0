"""Runs `shardserve run FILE` as a user would, for tests: a subprocess in its
own session, ready when /health answers 200, stopped with SIGTERM."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import httpx
import psutil

READY_TIMEOUT_S = 600.0
STOP_TIMEOUT_S = 120.0


def free_port() -> int:
    """A free port outside the kernel's ephemeral range and Ray's worker ports
    (10002-19999): Ray's own processes take ephemeral ports while the stack
    starts, and one of them could take ours before Serve's proxy binds it."""
    for _ in range(200):
        port = random.randrange(20000, 30000)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port in 20000-29999")


def shardserve_command() -> list[str]:
    script = Path(sys.executable).with_name("shardserve")
    return [str(script)] if script.exists() else [sys.executable, "-m", "shardserve.cli"]


class LocalStack:
    def __init__(self, spec_file: Path, log_file: Path, port: Optional[int] = None, env: Optional[dict] = None,
                 args: tuple[str, ...] = ()):
        self.spec_file = spec_file
        self.env = env  # extra environment for `shardserve run`
        self.args = args  # extra arguments for `shardserve run`
        self.log_file = log_file
        self.port = port or free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.process: Optional[subprocess.Popen] = None
        self.ready_after_s: Optional[float] = None

    def log(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""

    def start(self) -> LocalStack:
        started = time.monotonic()
        with open(self.log_file, "wb") as out:
            self.process = subprocess.Popen(
                [*shardserve_command(), "run", str(self.spec_file), "--port", str(self.port), *self.args],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                env={**os.environ, **self.env} if self.env else None,
            )
        deadline = started + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"shardserve run exited with {self.process.returncode}:\n{self.log()[-4000:]}")
            try:
                # Ready means both: the CLI said so, and the endpoint answers.
                if "OpenAI endpoint" in self.log() and httpx.get(f"{self.base_url}/health", timeout=5).status_code == 200:
                    self.ready_after_s = time.monotonic() - started
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(1.0)
        self.stop()
        raise RuntimeError(f"not ready after {READY_TIMEOUT_S:.0f}s:\n{self.log()[-4000:]}")

    def session_processes(self) -> list[psutil.Process]:
        """Processes still in the run's session (Ray, vLLM workers, ...)."""
        if self.process is None:
            return []
        left = []
        for proc in psutil.process_iter():
            try:
                if os.getsid(proc.pid) == self.process.pid:
                    left.append(proc)
            except (ProcessLookupError, psutil.Error):
                continue
        return left

    def ray_log_dir(self) -> Path:
        """The log directory of this stack's own Ray session, as its processes were told."""
        for proc in self.session_processes():
            try:
                args = proc.cmdline()
            except psutil.Error:
                continue
            for arg in args:
                if arg.startswith("--log_dir="):
                    return Path(arg.removeprefix("--log_dir="))
        raise AssertionError("no process of this stack names its Ray log directory")

    def stop(self) -> int:
        """SIGTERM to the CLI only, as Kubernetes or systemd would; returns its exit status."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        # Give orphans a moment to notice, then make sure none outlive the test.
        deadline = time.monotonic() + 20
        while self.session_processes() and time.monotonic() < deadline:
            time.sleep(0.5)
        self.leftovers = [p.name() for p in self.session_processes() if p.is_running()]
        for proc in self.session_processes():
            proc.kill()
        return self.process.returncode
