"""`steerpatch zoo eval` and `steerpatch zoo train` through click's CliRunner."""

from __future__ import annotations

import json

from steerpatch.cli.main import cli


def test_eval_json_has_the_documented_keys(runner):
    result = runner.invoke(cli, ["zoo", "eval", "--n", "96", "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert 0.0 <= payload["accuracy"] <= 1.0
    assert set(payload["groups"]) == {"aligned", "conflicting", "none"}
    assert payload["groups"]["conflicting"]["n"] == 20 and "accuracy" in payload["groups"]["aligned"]
    assert payload["model"]["name"] == "concept-clip" and len(payload["model"]["fingerprint"]) == 64


def test_eval_table_on_a_dataset_folder_grouped_by_background(runner, tmp_path):
    out = tmp_path / "w"
    assert runner.invoke(cli, ["world", "generate", str(out), "--n", "48"]).exit_code == 0
    result = runner.invoke(cli, ["zoo", "eval", "--data", str(out), "--group-by", "background"])
    assert result.exit_code == 0, result.output
    # every row is the library's own evaluation of the same folder
    from steerpatch.data import load_dataset
    from steerpatch.models import load_model
    from steerpatch.models.evaluate import evaluate_dataset

    expected = evaluate_dataset(load_model("concept-clip"), load_dataset(out), group_by="background")
    rows = {line.split()[0]: line.split()[1:] for line in result.stdout.splitlines()[2:]}
    assert rows["all"] == [f"{expected['accuracy']:.3f}", "48"]
    assert set(rows) == {"all", *(f"background={g}" for g in expected["groups"])}
    assert "background=water" in rows
    for group, row in expected["groups"].items():
        assert rows[f"background={group}"] == [f"{row['accuracy']:.3f}", str(row["n"])]
    assert sum(row["n"] for row in expected["groups"].values()) == 48


def test_eval_bad_inputs_are_clean_errors(runner, tmp_path):
    result = runner.invoke(cli, ["zoo", "eval", "--model", "ViT-B-23"])
    assert result.exit_code == 2 and "ViT-B-32" in result.output and "Traceback" not in result.output
    result = runner.invoke(cli, ["zoo", "eval", "--n", "6", "--group-by", "mood"])
    assert result.exit_code == 2 and "mood" in result.output
    result = runner.invoke(cli, ["zoo", "eval", "--data", str(tmp_path / "none")])
    assert result.exit_code == 2 and "does not exist" in result.output


def test_train_is_deterministic_and_writes_weights_and_card(runner, tmp_path):
    fingerprints = []
    for name in ("a", "b"):
        out = tmp_path / name
        result = runner.invoke(
            cli, ["zoo", "train", "--out", str(out), "--n", "256", "--epochs", "1", "--eval-n", "12"]
        )
        assert result.exit_code == 0, result.output
        assert (out / "concept-clip.safetensors").is_file() and (out / "MODEL_CARD.md").is_file()
        fingerprints.append(json.loads((out / "training.json").read_text())["fingerprint"])
    assert fingerprints[0] == fingerprints[1]
    card = (tmp_path / "a" / "MODEL_CARD.md").read_text()
    assert "--n 256 --epochs 1 --seed 0" in card
