"""`steerpatch serve` as a real process on a free loopback port."""

from __future__ import annotations

import signal
import subprocess
import sys

import httpx
import pytest

from steerpatch.cli.main import cli
from steerpatch.serve import bind_socket, free_port
from tests.helpers.process import assert_ctrl_c_exits_130


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
        assert_ctrl_c_exits_130(process)
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


@pytest.mark.parametrize(("extra", "message"), [
    (["--alias", "production", "--canary", "production=1.5"],
     "Error: --canary 'production=1.5': fraction 1.5 is outside 0-1; e.g. --canary production=0.1"),
    (["--alias", "production", "--canary", "candidate"],
     "Error: --canary 'candidate' is not ALIAS=FRACTION; e.g. --canary candidate=0.1"),
    (["--canary", "candidate=0.1"],
     "Error: --default-alias, --canary and --shadow choose among --alias labels; add --alias LABEL ..."),
    # a repeated --canary is refused before anything loads ("tiny" is not even registered), not overridden
    (["--alias", "production", "--alias", "candidate", "--canary", "candidate=0.2", "--canary", "candidate=0.3"],
     "Error: --canary 'candidate' is given twice (0.2 and 0.3); give each canary alias once, "
     "e.g. --canary candidate=0.3"),
    (["--alias", "production", "--alias", "a", "--alias", "b", "--canary", "a=0.6", "--canary", "b=0.7"],
     "Error: --canary is given for two aliases, 'a' (0.6) and 'b' (0.7) (total share 1.3 is above 1); "
     "one server has one canary: give --canary once"),
    (["--alias", "production={graph}", "--shadow", "staging"],
     "Error: --shadow 'staging' is not a served alias; served: production (add it with --alias staging)"),
    (["--alias", "production={graph}", "--alias", "candidate={graph}", "--canary", "production=0.5"],
     "Error: --canary 'production' is the default alias; pick another served alias (production, candidate)"),
])
def test_bad_routing_options_are_one_line_and_exit_2(runner, graph, extra, message):
    args = [a.replace("{graph}", str(graph[1])) for a in extra]
    result = runner.invoke(cli, ["serve", "tiny", "--port", "0", *args])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [message]


def test_serve_several_aliases_in_a_subprocess(graph, candidate):
    port = free_port()
    process, lines = _start("tiny", port, "--alias", f"production={graph[1]}", "--alias", f"candidate={candidate[1]}",
                            "--shadow", "candidate", "--batch-wait-ms", "1")
    try:
        text = "".join(lines)
        assert "serving served-fix@1.0.0 as production (default)" in text and "as candidate (" in text
        assert "shadow: candidate runs beside production" in text and "GET /metrics, /v2" in text
        url = f"http://127.0.0.1:{port}"
        answer = httpx.post(f"{url}/predict", json={"tensor": [[[0.0] * 64] * 64] * 3},
                            headers={"X-Steerpatch-Alias": "candidate"}, timeout=30).json()
        assert answer["patch_hash"] == candidate[0].content_hash
        assert httpx.get(f"{url}/v2/health/ready", timeout=30).status_code == 200
        assert 'steerpatch_requests_total{alias="candidate",route="predict",status="200"} 1.0' in httpx.get(
            f"{url}/metrics", timeout=30).text
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=60)
