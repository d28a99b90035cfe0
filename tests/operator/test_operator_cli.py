"""`shardserve render`, `shardserve operator` and `python -m shardserve_operator`."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from pathlib import Path

import pytest
import yaml

from operator_harness import eventually, tiny_document
from shardserve.api.validation import load_file
from shardserve.cli import main as cli_main
from shardserve_operator.render import render_children

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "manifests" / "examples" / "tiny-cpu.yaml"
INGRESS_CASE = Path(__file__).parent / "cases" / "llama-8b-1gpu.yaml"


def test_render_prints_every_object_the_operator_would_create(capsys):
    assert cli_main(["render", str(INGRESS_CASE)]) == 0
    printed = list(yaml.safe_load_all(capsys.readouterr().out))
    assert [o["kind"] for o in printed] == ["RayService", "Service", "Ingress"]
    assert printed == render_children(load_file(INGRESS_CASE))


def test_render_uses_the_operators_default_image_setting(capsys, monkeypatch):
    monkeypatch.setenv("SHARDSERVE_DEFAULT_IMAGE", "example.com/ray:42")
    assert cli_main(["render", str(TINY)]) == 0
    rayservice = next(yaml.safe_load_all(capsys.readouterr().out))
    head = rayservice["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert head["image"] == "example.com/ray:42"


def test_invalid_file_exits_2_with_the_same_messages_as_run(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    doc = tiny_document()
    doc["spec"]["parallelism"]["tensor"] = 0
    doc["spec"]["model"]["source"] = "ftp://nowhere"
    bad.write_text(yaml.safe_dump(doc))
    messages = {}
    for command in ("render", "run"):  # run fails on the file before it imports Ray
        with pytest.raises(SystemExit) as exit_info:
            cli_main([command, str(bad)])
        assert exit_info.value.code == 2
        captured = capsys.readouterr()
        assert captured.out == ""
        messages[command] = captured.err
    assert messages["render"] == messages["run"]
    assert "spec.parallelism.tensor" in messages["render"] and "spec.model.source" in messages["render"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _run_entry_point(cluster, argv: list[str]) -> None:
    port = _free_port()
    env = dict(os.environ, SHARDSERVE_LOG_LEVEL="WARNING")
    process = await asyncio.create_subprocess_exec(
        sys.executable, *argv, "--api-server", cluster.url, "--health-port", str(port), "--no-leader-election",
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    try:
        async def ready() -> bool:
            try:
                async with cluster.session.get(f"http://127.0.0.1:{port}/readyz") as response:
                    return response.status == 200
            except OSError:
                return process.returncode is not None
        await eventually(ready, 30, "the operator process to be ready")
        assert process.returncode is None, (await process.stdout.read()).decode()
        await cluster.create_md(tiny_document())
        await eventually(lambda: cluster.rayservice("tiny") and cluster.service("tiny"), 10, "children")
        process.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(process.wait(), 10)
        output = (await process.stdout.read()).decode()
        assert code == 0, output
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


@pytest.mark.asyncio
async def test_python_m_shardserve_operator_runs_and_stops_on_sigterm(cluster):
    await _run_entry_point(cluster, ["-m", "shardserve_operator"])


@pytest.mark.asyncio
async def test_shardserve_operator_subcommand_runs_and_stops_on_sigterm(cluster):
    await _run_entry_point(cluster, ["-m", "shardserve.cli", "operator"])
