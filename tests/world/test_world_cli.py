"""`steerpatch world generate` through click's CliRunner."""

from __future__ import annotations

import json

from steerpatch.cli.main import cli
from steerpatch.data import load_dataset


def test_generate_writes_a_loadable_world(runner, tmp_path):
    out = tmp_path / "val"
    result = runner.invoke(cli, ["world", "generate", str(out), "--split", "val", "--n", "12", "--seed", "3"])
    assert result.exit_code == 0, result.output
    assert "wrote 12 val images" in result.output
    data = load_dataset(out)
    assert len(data) == 12 and {i.attributes["split"] for i in data} == {"val"}
    assert {i.attributes["seed"] for i in data} == {3}
    assert json.loads((out / "world.json").read_text())["n"] == 12


def test_generate_is_deterministic(runner, tmp_path):
    for name in ("a", "b"):
        assert runner.invoke(cli, ["world", "generate", str(tmp_path / name), "--n", "6"]).exit_code == 0
    assert load_dataset(tmp_path / "a").fingerprint() == load_dataset(tmp_path / "b").fingerprint()


def test_generate_refuses_non_empty_output(runner, tmp_path):
    (tmp_path / "x.txt").write_text("x")
    result = runner.invoke(cli, ["world", "generate", str(tmp_path), "--n", "2"])
    assert result.exit_code == 2
    assert "Error:" in result.output and str(tmp_path) in result.output and "not empty" in result.output


def test_generate_rejects_bad_split(runner, tmp_path):
    result = runner.invoke(cli, ["world", "generate", str(tmp_path / "o"), "--split", "holdout"])
    assert result.exit_code == 2 and "holdout" in result.output
