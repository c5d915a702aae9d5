"""`steerpatch studio` on the command line, and the cached default world."""

from __future__ import annotations

import os
import subprocess
import sys

import httpx

from steerpatch.cli.main import cli
from tests.helpers.process import assert_ctrl_c_exits_130


def test_help_lists_the_options(runner):
    result = runner.invoke(cli, ["studio", "--help"])
    assert result.exit_code == 0
    for option in ("--model", "--sae", "--data", "--port", "--patch-dir"):
        assert option in result.output


def test_other_model_needs_an_sae(runner):
    result = runner.invoke(cli, ["studio", "--model", "ViT-B-32"])
    assert result.exit_code == 2
    assert "--sae is required" in result.output


def test_taken_port_is_a_clean_error(runner):
    from steerpatch.studio import bind_socket

    taken = bind_socket(0)
    try:
        port = taken.getsockname()[1]
        result = runner.invoke(cli, ["studio", "--port", str(port)])
    finally:
        taken.close()
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [  # one line, before the model is loaded
        f"Error: cannot listen on 127.0.0.1:{port} (Address already in use); "
        "pass another --port, or --port 0 for a free one"
    ]


def test_listening_socket_answers_without_nagle_delay():
    import socket

    from steerpatch.studio import bind_socket

    sock = bind_socket(0)
    try:
        # accepted connections inherit TCP_NODELAY; without it each small JSON answer can wait ~40 ms
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    finally:
        sock.close()


def test_default_world_is_generated_once(tmp_path):
    from steerpatch.data import load_dataset
    from steerpatch.studio import default_world

    root = default_world(tmp_path / "world-test", n=24)
    manifest = root / "manifest.jsonl"
    stamp = manifest.stat().st_mtime_ns
    assert len(load_dataset(root)) == 24
    assert default_world(root, n=24) == root
    assert manifest.stat().st_mtime_ns == stamp
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left behind


def test_studio_command_prints_its_url_serves_and_ctrl_c_exits_130(tmp_path, test_world):
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    command = [sys.executable, "-m", "steerpatch.cli.main", "studio", "--data", str(test_world), "--port", "0",
               "--patch-dir", str(tmp_path / "patches")]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = process.stdout.readline()
        assert "steerpatch studio running at http://127.0.0.1:" in line, line
        url = line.split(" at ")[1].split()[0]
        info = httpx.get(url + "api/info", timeout=60).json()
        assert info["model"] == "concept-clip" and info["n_items"] == 600
        assert httpx.get(url, timeout=60).text.lstrip().startswith("<!doctype html>")
        assert_ctrl_c_exits_130(process)
    finally:
        process.kill()
        process.wait(timeout=60)
