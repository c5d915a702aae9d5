"""The README's command-line walkthrough, run as written in a fresh folder: it must pass and promote its patch.

The commands come from the README itself (the first ```bash block of "The workflow on the command
line"); the excerpts in the ```text block after it must appear in what the commands print.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def _walkthrough() -> tuple[list[str], list[str]]:
    """(commands, excerpt lines) of the README walkthrough; continuation lines joined."""
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## The workflow on the command line") :]
    section = section[: section.index("\n## ", 4)]
    script = re.search(r"```bash\n(.*?)```", section, flags=re.S).group(1)
    commands = [c for c in script.replace("\\\n", " ").splitlines() if c.strip() and not c.startswith("#")]
    excerpt = re.search(r"```text\n(.*?)```", section, flags=re.S).group(1)
    lines = [line for line in excerpt.splitlines() if line.strip() and not line.startswith("$ ")]
    return commands, lines


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_readme_walkthrough_parses():
    commands, excerpt = _walkthrough()
    assert commands[0] == "source .venv/bin/activate"
    assert commands[-1].startswith("steerpatch serve ")
    assert any(c.startswith('steerpatch promote concept-clip.water-shortcut "$VERSION"') for c in commands)
    assert len(excerpt) >= 10


@pytest.mark.slow
def test_readme_walkthrough_runs_as_written_in_a_fresh_folder(tmp_path):
    commands, excerpt = _walkthrough()
    body, serve = commands[1:-1], commands[-1]
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",  # what `source .venv/...` gives
        "STEERPATCH_REGISTRY_DIR": str(tmp_path / "registry"),
        "OMP_NUM_THREADS": "1",
    }
    env.pop("MLFLOW_TRACKING_URI", None)
    run = subprocess.run(["bash", "-euo", "pipefail", "-c", "\n".join(body)], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=1800)  # fmt: skip
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-4000:]
    missing = [line for line in excerpt if line not in output]
    assert not missing, f"README excerpt lines not printed by the run: {missing}"
    assert "water-shortcut@1.0.0: PASS" in run.stdout
    assert "concept-clip.water-shortcut: production (new) -> v1" in run.stdout
    assert (tmp_path / "attribution" / "exemplars-latent62.png").is_file()

    # the Python walkthrough, in the same folder: it measures every gate, so its `pass` means something
    text = README.read_text(encoding="utf-8")
    python = re.search(r"## The workflow in Python\n\n```python\n(.*?)```", text, flags=re.S).group(1)
    snippet = subprocess.run([sys.executable, "-c", python], cwd=tmp_path, env=env, capture_output=True,
                             text=True, timeout=900)  # fmt: skip
    assert snippet.returncode == 0, snippet.stderr[-4000:]
    verdict, unmeasured, rate = snippet.stdout.strip().splitlines()[-1].split(" ", 2)
    assert (verdict, unmeasured) == ("pass", "[]") and float(rate) >= 0.25

    port = _free_port()
    server = subprocess.Popen(serve.replace("--port 8000", f"--port {port}").split(), cwd=tmp_path, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        health = None
        while time.monotonic() < deadline and server.poll() is None:
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except httpx.TransportError:
                time.sleep(0.2)
        assert health is not None and health.status_code == 200, server.stdout.read() if server.poll() else ""
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=60)
