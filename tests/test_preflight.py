"""Cheap checks before heavy imports: model names, patch/model/SAE fit, and the exit code of Ctrl-C."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from steerpatch.cli.main import EXIT_INTERRUPTED, cli

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "registry" / "patches" / "water-shortcut.json"


def _in_fresh_process(code: str) -> dict:
    """Run code in a new interpreter; it prints a JSON dict as its last line."""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


CLI_PROBE = """
import contextlib, io, json, sys, time
from steerpatch.cli.main import cli
err = io.StringIO()
start = time.perf_counter()
with contextlib.redirect_stderr(err):
    try:
        cli({args!r}, prog_name="steerpatch")
    except SystemExit as done:
        code = done.code
print(json.dumps({{"code": code, "seconds": time.perf_counter() - start, "stderr": err.getvalue(),
                  "torch": "torch" in sys.modules}}))
"""


def test_a_model_name_typo_is_refused_in_under_a_second_without_torch():
    image = str(
        ROOT / "steerpatch" / "zoo" / "concept-clip.json"
    )  # any existing file: the name is checked first
    for args in (
        ["attribute", image, "--model", "ViT-B-3"],
        ["patch", "new", "--name", "x", "--edit", "1:scale:0", "--rationale", "r", "--model", "ViT-B-3"],
    ):
        result = _in_fresh_process(CLI_PROBE.format(args=args))
        assert result["code"] == 2, result
        assert "unknown model 'ViT-B-3'; close names: ViT-B-32" in result["stderr"]
        assert not result["torch"] and result["seconds"] < 1.0, result


def _rehashed(tmp_path: Path, **changes) -> Path:
    from steerpatch.patch import load_patch

    patch = load_patch(SHIPPED).with_changes(**changes)
    path = tmp_path / "p.json"
    path.write_text(json.dumps(patch.to_dict()))
    return path


def test_a_patch_that_cannot_fit_its_model_is_refused_before_the_model_is_built(tmp_path):
    sae = str(ROOT / "steerpatch" / "zoo" / "concept-clip-sae")
    path = _rehashed(tmp_path, model={"id": "ViT-L-14", "fingerprint": "ab" * 32})
    args = ["validate", str(path), "--data", str(tmp_path), "--sae", sae]
    result = _in_fresh_process(CLI_PROBE.format(args=args))
    assert result["code"] == 2, result
    assert (
        "the SAE at" in result["stderr"]
        and "reads width d_in=64 but ViT-L-14 has width 1024" in result["stderr"]
    )
    assert not result["torch"], "the model (or torch) was loaded before refusing"


def test_a_wrong_fingerprint_for_the_shipped_model_is_refused_before_loading_it(tmp_path, runner):
    path = _rehashed(tmp_path, model={"id": "concept-clip", "fingerprint": "ab" * 32})
    result = _in_fresh_process(CLI_PROBE.format(args=["validate", str(path), "--data", str(tmp_path)]))
    assert result["code"] == 2 and not result["torch"], result
    assert f"with fingerprint {'ab' * 32}, but the shipped concept-clip has fingerprint" in result["stderr"]
    # the override still gets through the preflight (and is recorded later, by the binding check)
    from steerpatch.patch import load_patch
    from steerpatch.preflight import preflight

    preflight(load_patch(path), allow_fingerprint_mismatch=True)


def test_ctrl_c_exits_130_not_1(runner, monkeypatch, tmp_path):
    import steerpatch.patch

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(steerpatch.patch, "load_patch", interrupted)
    result = runner.invoke(cli, ["patch", "show", str(SHIPPED)])
    assert result.exit_code == EXIT_INTERRUPTED == 130
    assert "interrupted" in result.stderr and "Traceback" not in result.output


def test_ctrl_c_of_a_real_process_exits_130(tmp_path):
    import os
    import signal
    import time

    # interrupt a real command mid-run: `world generate` writes 2,400 images into a temporary folder
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from steerpatch.cli.main import main; main()",
            "world",
            "generate",
            str(tmp_path / "w"),
            "--split",
            "test",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    # wait until the command is running: the world writer creates its temporary folder first
    deadline = time.monotonic() + 60
    while not any(tmp_path.glob(".w.*")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    assert not any(tmp_path.iterdir()), "a half-written world was left behind"


@pytest.mark.parametrize("spec", ["local-dir:/nowhere", "hf-hub:org/repo", "ViT-B-32", "concept-clip"])
def test_known_and_prefixed_specs_pass_the_cheap_check(spec):
    from steerpatch.preflight import check_model_spec, known_model_names

    check_model_spec(spec)
    names = known_model_names()
    assert names is not None and "ViT-L-14" in names and names[0] == "concept-clip"
