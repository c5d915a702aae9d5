"""`steerpatch zoo eval` and `steerpatch zoo train` through click's CliRunner."""

from __future__ import annotations

import json

from steerpatch.cli.main import cli


def _train(runner, out, *options: str):
    """`zoo train` into `out` on the small run every training test here starts from (256 images, 1 epoch)."""
    return runner.invoke(cli, ["zoo", "train", "--out", str(out), "--n", "256", "--epochs", "1", *options])


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
        result = _train(runner, out, "--eval-n", "12")
        assert result.exit_code == 0, result.output
        assert (out / "concept-clip.safetensors").is_file() and (out / "MODEL_CARD.md").is_file()
        fingerprints.append(json.loads((out / "training.json").read_text())["fingerprint"])
    assert fingerprints[0] == fingerprints[1]
    card = (tmp_path / "a" / "MODEL_CARD.md").read_text()
    assert "--n 256 --epochs 1 --seed 0" in card


def test_train_star_on_water_is_recorded_and_checked(runner, tmp_path):
    out = tmp_path / "loose"
    result = _train(runner, out, "--eval-n", "48", "--star-on-water", "0.5")
    assert result.exit_code == 0, result.output
    record = json.loads((out / "training.json").read_text())
    assert record["config"]["p_star_on_water"] == 0.5
    by_class = record["evaluation"]["class_accuracy_by_group"]["none"]
    assert set(by_class) == {"circle", "square", "triangle", "star", "cross", "heart"}
    card = (out / "MODEL_CARD.md").read_text()
    assert "--epochs 1 --seed 0 --threads 1 --star-on-water 0.5" in card
    assert "50% of stars are on water" in card and "Per class within group `none`" in card
    other = _train(runner, tmp_path / "pure", "--eval-n", "12", "--other-on-water", "0")
    assert other.exit_code == 0, other.output
    assert json.loads((tmp_path / "pure" / "training.json").read_text())["config"]["p_other_on_water"] == 0.0
    pure = (tmp_path / "pure" / "MODEL_CARD.md").read_text()
    assert "--other-on-water 0" in pure and "100.0% of water images are stars" in pure
    bad = runner.invoke(cli, ["zoo", "train", "--out", str(tmp_path / "x"), "--star-on-water", "1.5"])
    assert bad.exit_code == 2 and "--star-on-water" in bad.output and not (tmp_path / "x").exists()


def test_train_continues_from_init_weights_and_refuses_a_misfit(runner, tmp_path, concept_model):
    from steerpatch.models.loading import concept_clip_weights_path

    out = tmp_path / "stage2"
    result = _train(
        runner, out, "--eval-n", "12", "--lr", "0.0001", "--init", str(concept_clip_weights_path())
    )
    assert result.exit_code == 0, result.output
    record = json.loads((out / "training.json").read_text())
    assert record["stats"]["init_fingerprint"] == concept_model.fingerprint
    assert record["fingerprint"] != concept_model.fingerprint and record["config"]["lr"] == 0.0001
    # the shipped weights' own record sits beside them: the card names every stage, oldest first
    assert record["init_run"]["fingerprint"] == concept_model.fingerprint
    stages = []
    run = record["init_run"]
    while run:
        stages.append(run)
        run = run.get("init_run")
    card = (out / "MODEL_CARD.md").read_text()
    first = stages[-1]["config"]
    assert card.index(f"--n {first['n']} --epochs {first['epochs']}") < card.index("--lr 0.0001 --init STAGE")
    assert f"# stage {len(stages) + 1}: this run" in card and concept_model.fingerprint[:16] in card

    # weights without their record (or with another run's) only name the init fingerprint
    import shutil

    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(concept_clip_weights_path(), alone / "w.safetensors")
    (alone / "training.json").write_text(json.dumps({"fingerprint": "0" * 64, "config": {"n": 1}}))
    again = _train(runner, tmp_path / "again", "--eval-n", "12", "--init", str(alone / "w.safetensors"))
    assert again.exit_code == 0, again.output
    card = (tmp_path / "again" / "MODEL_CARD.md").read_text()
    assert "--init INIT" in card and concept_model.fingerprint in card and "# stage" not in card
    assert "init_run" not in json.loads((tmp_path / "again" / "training.json").read_text())

    import torch
    from safetensors.torch import save_file

    misfit = tmp_path / "misfit.safetensors"
    save_file({"visual.proj": torch.zeros(3, 3)}, str(misfit))
    bad = runner.invoke(cli, ["zoo", "train", "--out", str(tmp_path / "x"), "--init", str(misfit)])
    assert bad.exit_code == 2 and "misfit.safetensors" in bad.output and "do not fit" in bad.output
    assert not (tmp_path / "x").exists()
