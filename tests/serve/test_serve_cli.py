"""`steerpatch serve` as a real process on a free loopback port."""

from __future__ import annotations

import signal
import subprocess
import sys

import httpx

from steerpatch.cli.main import cli
from steerpatch.serve import bind_socket, free_port


def _start(path, port: int, *options: str) -> tuple[subprocess.Popen, list[str]]:
    process = subprocess.Popen(
        [sys.executable, "-m", "steerpatch.cli.main", "serve", str(path), "--port", str(port), *options],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    lines = []
    for line in process.stderr:
        lines.append(line)
        if "listening on" in line:
            break
    return process, lines


def test_serve_file_in_a_subprocess_and_ctrl_c_exits_130(graph):
    patch, path = graph
    port = free_port()
    process, lines = _start(path, port, "--docs")
    try:
        assert any(f"listening on http://127.0.0.1:{port}" in line and "GET /docs" in line for line in lines), lines
        assert any("serving served-fix@1.0.0" in line for line in lines)
        # the socket was bound before "listening" was printed: the first request cannot be refused
        health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=30).json()
        assert health["patch_hash"] == patch.content_hash
        assert httpx.get(f"http://127.0.0.1:{port}/openapi.json", timeout=30).status_code == 200  # --docs
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 130
        rest = process.stderr.read()
        assert "Traceback" not in rest and "stopped (Ctrl-C)" in rest, rest
    finally:
        process.kill()
        process.wait(timeout=30)


def test_a_busy_port_is_one_line_and_exit_2_before_listening(runner, graph):
    taken = bind_socket(0)
    try:
        port = taken.getsockname()[1]
        result = runner.invoke(cli, ["serve", str(graph[1]), "--port", str(port)])
    finally:
        taken.close()
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        f"Error: cannot listen on 127.0.0.1:{port} (Address already in use); "
        "pass another --port, or --port 0 for a free one"
    ]


def test_serve_refuses_a_missing_file(runner, tmp_path):
    result = runner.invoke(cli, ["serve", str(tmp_path / "none.onnx"), "--port", "0"])
    assert result.exit_code == 2
    assert "does not exist" in result.output


def test_serve_refuses_a_file_that_is_not_a_steerpatch_graph(runner, tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a graph")
    result = runner.invoke(cli, ["serve", str(bad), "--port", "0"])
    assert result.exit_code == 2
    assert "is not a loadable ONNX graph" in result.output
