"""`steerpatch compile` through the real CLI group."""

from __future__ import annotations

import json

import pytest

from steerpatch.cli.main import cli
from steerpatch.compile import session_metadata
from steerpatch.compile.runtime import create_session
from steerpatch.patch import save_patch
from tests.helpers.tiny import make_patch


@pytest.fixture(scope="module")
def patch_file(tiny, saes, tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "tiny-fix.json"
    save_patch(make_patch(tiny, saes["jumprelu"], tokens="cls"), path)
    return path


def test_compile_json(runner, patch_file, tmp_path):
    out = tmp_path / "graph.onnx"
    result = runner.invoke(cli, ["compile", str(patch_file), "--out", str(out), "--classes", "a, b,c", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["path"] == str(out) and out.is_file()
    assert doc["mode"] == "sparse" and "jumprelu" in doc["mode_reason"]
    assert doc["parity"]["passed"] and doc["parity"]["max_abs_diff"] <= 1e-4 and doc["parity"]["samples"] == 64
    assert doc["classes"] == ["a", "b", "c"] and doc["outputs"] == ["embedding", "logits", "probs"]
    assert session_metadata(create_session(out))["patch_hash"] == doc["patch_hash"]
    assert "parity gate" in result.stderr  # steps are reported as they run


def test_compile_text_and_default_output_name(runner, patch_file, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(cli, ["compile", str(patch_file), "--head", "embedding", "--tolerance", "1e-3"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "tiny-fix-1.0.0.onnx").is_file()
    assert "mode: sparse" in result.stdout and "parity: max abs diff" in result.stdout
    assert "<= tolerance 0.001" in result.stdout


def test_parity_failure_exits_2_and_writes_nothing(runner, patch_file, tmp_path):
    out = tmp_path / "graph.onnx"
    result = runner.invoke(cli, ["compile", str(patch_file), "--head", "embedding", "--tolerance", "1e-12",
                                 "--out", str(out)])
    assert result.exit_code == 2
    assert "Error: parity check failed" in result.stderr and "nothing was written" in result.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("args", "message"), [
    (["missing.json"], "missing.json"),
    (["{patch}", "--samples", "8"], "8 is not in the range x>=64"),
    (["{patch}", "--head", "logits"], "'logits' is not one of"),
    (["{patch}", "--classes", " , "], "give class names separated by commas"),
])
def test_bad_input(args, message, runner, patch_file, tmp_path):
    args = [a.format(patch=patch_file, tmp=tmp_path) for a in args]
    result = runner.invoke(cli, ["compile", *args])
    assert result.exit_code == 2
    assert message in result.output


def test_compile_several_patches_into_one_graph(runner, tiny, saes, patch_file, tmp_path):
    second = tmp_path / "second.json"
    save_patch(make_patch(tiny, saes["standard"], name="second-fix", edits=["4:scale:0"]), second)
    out = tmp_path / "multi.onnx"
    result = runner.invoke(cli, ["compile", str(patch_file), str(second), "--out", str(out), "--head", "embedding"])
    assert result.exit_code == 0, result.output
    assert "patch_index 1: tiny-fix@1.0.0" in result.stdout and "patch_index 2: second-fix@1.0.0" in result.stdout
    assert [i.name for i in create_session(out).get_inputs()] == ["pixels", "patch_index"]


def test_compile_several_patches_refuses_other_blocks_and_a_missing_out(runner, tiny, saes, patch_file, tmp_path):
    other = tmp_path / "other.json"
    save_patch(make_patch(tiny, saes["standard"], name="other-fix", block=1), other)
    out = tmp_path / "multi.onnx"
    result = runner.invoke(cli, ["compile", str(patch_file), str(other), "--out", str(out), "--head", "embedding"])
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and "steers block 1 but tiny-fix@1.0.0 steers block 2" in result.stderr
    assert not out.exists()
    result = runner.invoke(cli, ["compile", str(patch_file), str(other)])
    assert result.exit_code == 2 and "name it with --out FILE.onnx" in result.stderr
