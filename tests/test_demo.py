"""The main job end to end: `steerpatch demo` on the embedded default, twice, against a fresh local store."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from steerpatch.cli.main import cli


@pytest.mark.slow
def test_demo_runs_end_to_end_and_again(runner, tmp_path, monkeypatch):
    monkeypatch.setenv("STEERPATCH_REGISTRY_DIR", str(tmp_path / "registry"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    out = tmp_path / "demo"

    first = runner.invoke(cli, ["demo", "--out", str(out), "--requests", "3"])
    assert first.exit_code == 0, first.output
    assert "PASS" in first.output
    assert "registered concept-clip.water-shortcut version 1" in first.output
    assert "alias production: - -> 1" in first.output
    parity = float(re.search(r"parity max \|diff\| ([0-9.e+-]+)", first.output).group(1))
    assert parity <= 1e-4
    # the first request is the misclassified instance the patch was made for: the server fixes it
    rows = re.findall(r"^\s+(\S+\.png)\s+(\w+)\s+(\w+)\s+(\w+)$", first.output, flags=re.M)
    assert len(rows) == 3
    image, true, before, after = rows[0]
    assert before == "star" and after == true

    # the README's excerpt is what the demo prints: every line of it without '...' appears as printed
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    excerpt = re.search(r"What `steerpatch demo` does.*?```text\n(.*?)```", readme, flags=re.S).group(1)
    printed = first.stdout.splitlines()  # stdout alone: progress bars on stderr share no lines with it
    stale = [line for line in excerpt.splitlines() if line.strip() and "..." not in line and line not in printed]
    assert not stale, f"README demo excerpt lines the demo no longer prints: {stale}"

    run_dirs = sorted(p for p in out.iterdir() if p.name.startswith("run-"))
    assert (run_dirs[0] / "report" / "report.html").exists()
    assert (run_dirs[0] / "steered.onnx").stat().st_size > 0

    second = runner.invoke(cli, ["demo", "--out", str(out), "--requests", "1"])
    assert second.exit_code == 0, second.output
    assert "water-shortcut@1.0.1" in second.output
    assert "alias production: 1 -> 2" in second.output
