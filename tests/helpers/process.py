"""Stopping a served command (`steerpatch serve`, `steerpatch studio`) the way a user does: Ctrl-C."""

import signal
import subprocess


def assert_ctrl_c_exits_130(process: subprocess.Popen) -> None:
    """Send SIGINT to `process` (started with `stderr=PIPE, text=True`) and assert that it exits 130 with
    a one-line "stopped (Ctrl-C)" on stderr and no traceback."""
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=60) == 130
    rest = process.stderr.read()
    assert "Traceback" not in rest and "stopped (Ctrl-C)" in rest, rest
