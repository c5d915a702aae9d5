"""`steerpatch suggest` through the real CLI group: JSON output, and bad input refused before anything is written."""

from __future__ import annotations

import json
import shutil

import pytest

from steerpatch.cli.main import cli


def test_json_lists_candidates_best_first_with_patch_files(runner, tmp_path, mistake, small_pool):
    from steerpatch.patch import load_patch

    path, label, _ = mistake
    out = tmp_path / "out"
    result = runner.invoke(cli, ["suggest", str(path), "--label", label, "--data", str(small_pool), "--out", str(out),
                                 "--budget", "6", "--keep", "2", "--name", "water-fix", "--json", "--quiet"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert set(doc) == {"candidates"} and 1 <= len(doc["candidates"]) <= 2
    for rank, row in enumerate(doc["candidates"], 1):
        # every candidate is an alternative for the one fix the user named; files tell them apart
        assert row["patch"] == str(out / f"water-fix-c{rank}.json")
        assert load_patch(row["patch"]).name == "water-fix"
        assert load_patch(row["patch"]).edits and len(load_patch(row["patch"]).edits) == row["edits"]
        assert set(row["objective"]) >= {"targets_fixed", "failure_moved", "ripple", "kl_rest", "score"}
    assert (out / "fix_vs_ripple.png").is_file()


def _bad(runner, tmp_path, args):
    out = tmp_path / "out"
    result = runner.invoke(cli, ["suggest", *args, "--out", str(out), "--budget", "2", "--quiet"])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error:"), result.output
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]  # no half-built folder either
    return lines[0]


def test_an_image_the_model_already_gets_right_is_refused(runner, tmp_path, right_image, small_pool):
    path, label = right_image
    line = _bad(runner, tmp_path, [str(path), "--label", label, "--data", str(small_pool)])
    assert "already classified as" in line and str(path) in line


def test_a_label_that_is_not_a_class_is_refused(runner, tmp_path, mistake, small_pool):
    line = _bad(runner, tmp_path, [str(mistake[0]), "--label", "dragon", "--data", str(small_pool)])
    assert "'dragon' is not a class" in line and "circle" in line


def test_an_empty_pool_is_refused(runner, tmp_path, mistake):
    empty = tmp_path / "empty"
    (empty / "circle").mkdir(parents=True)
    line = _bad(runner, tmp_path, [str(mistake[0]), "--label", mistake[1], "--data", str(empty)])
    assert "holds no images" in line


def test_a_pool_of_another_models_classes_is_refused(runner, tmp_path, mistake, small_pool):
    foreign = tmp_path / "foreign"
    for name in ("cat", "dog"):
        (foreign / name).mkdir(parents=True)
        for image in sorted((small_pool / "circle").glob("*.png"))[:2]:
            shutil.copy(image, foreign / name / image.name)
    line = _bad(runner, tmp_path, [str(mistake[0]), "--label", mistake[1], "--data", str(foreign)])
    assert "['cat', 'dog']" in line and "does not know" in line


def test_a_name_that_is_not_a_slug_is_refused(runner, tmp_path, mistake, small_pool):
    line = _bad(runner, tmp_path, [str(mistake[0]), "--label", mistake[1], "--data", str(small_pool),
                                   "--name", "Water Fix"])
    assert "--name" in line and "'Water Fix' is not a slug" in line


def test_a_non_empty_out_folder_is_refused_before_any_work(runner, tmp_path, mistake, small_pool):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = runner.invoke(cli, ["suggest", str(mistake[0]), "--label", mistake[1], "--data", str(small_pool),
                                 "--out", str(out)])
    assert result.exit_code == 2 and "not empty" in result.output
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


@pytest.mark.parametrize("missing", ["nope.png"])
def test_a_missing_image_is_refused(runner, tmp_path, small_pool, missing):
    line = _bad(runner, tmp_path, [str(tmp_path / missing), "--label", "circle", "--data", str(small_pool)])
    assert "does not exist" in line


def test_a_pool_where_the_mistake_never_recurs_is_refused(runner, tmp_path, mistake, small_pool, concept_model):
    from steerpatch.data import load_dataset
    from steerpatch.models import build_zero_shot_head, classify_images

    data = load_dataset(small_pool)
    head = build_zero_shot_head(concept_model, data.classes)
    items = data.items[:60]
    predicted = classify_images(concept_model, [data.load_image(i) for i in items], head, progress=False)
    flat = tmp_path / "flat"
    flat.mkdir()
    for item, p in zip(items, predicted, strict=True):
        if p != mistake[2]:
            shutil.copy(item.path, flat / item.path.name)
    line = _bad(runner, tmp_path, [str(mistake[0]), "--label", mistake[1], "--data", str(flat)])
    assert "is given star like the image" in line
