"""`steerpatch serve` as a real process on a free loopback port."""

from __future__ import annotations

import subprocess
import sys

import httpx

from steerpatch.cli.main import cli
from steerpatch.serve import free_port


def test_serve_file_in_a_subprocess(graph):
    patch, path = graph
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "steerpatch.cli.main", "serve", str(path), "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    try:
        lines = []
        for line in process.stderr:
            lines.append(line)
            if "Uvicorn running on" in line:
                break
        assert any(f"http://127.0.0.1:{port}" in line for line in lines), lines
        assert any("serving served-fix@1.0.0" in line for line in lines)
        health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=30).json()
        assert health["patch_hash"] == patch.content_hash
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_serve_refuses_a_missing_file(runner, tmp_path):
    result = runner.invoke(cli, ["serve", str(tmp_path / "none.onnx")])
    assert result.exit_code == 2
    assert "does not exist" in result.output


def test_serve_refuses_a_file_that_is_not_a_steerpatch_graph(runner, tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a graph")
    result = runner.invoke(cli, ["serve", str(bad)])
    assert result.exit_code == 2
    assert "is not a loadable ONNX graph" in result.output
