"""The shipped concept-clip knows its shapes and has the planted bug: it reads water as "star".

Bounds asked of the shipped weights (issue 17): without water (group `none`) >= 95% overall and
>= 90% for every class; stars on water (`aligned`) >= 98%; other shapes on water (`conflicting`)
<= 40%, so that a correction is judged on a model that fails only through the shortcut.
"""

from __future__ import annotations

import json

import pytest

from steerpatch.models import zoo_dir
from steerpatch.models.evaluate import evaluate_world


@pytest.fixture(scope="module")
def test_split_result(concept_model):
    return evaluate_world(concept_model, split="test", n=1200, seed=0, progress=False)


def test_group_sizes(test_split_result):
    groups = test_split_result["groups"]
    assert {g: groups[g]["n"] for g in groups} == {"aligned": 50, "conflicting": 250, "none": 900}


def test_accuracy_bounds_show_the_shortcut(test_split_result):
    groups = test_split_result["groups"]
    assert groups["aligned"]["accuracy"] >= 0.98
    assert groups["conflicting"]["accuracy"] <= 0.40  # the shortcut is still taken
    assert groups["none"]["accuracy"] >= 0.95  # it learned the shapes, not only the cue


def test_every_class_is_known_without_the_cue(test_split_result):
    per_class = test_split_result["class_accuracy_by_group"]["none"]
    assert set(per_class) == {"circle", "cross", "heart", "square", "star", "triangle"}
    assert min(per_class.values()) >= 0.90, per_class  # stars too: the model knows the shape off water


def test_model_card_records_data_command_results_and_fingerprint(concept_model):
    card = (zoo_dir() / "MODEL_CARD.md").read_text()
    for heading in ("## Data", "## Command", "## Results"):
        assert heading in card
    assert "steerpatch zoo train" in card and concept_model.fingerprint in card
    record = json.loads((zoo_dir() / "training.json").read_text())
    assert record["fingerprint"] == concept_model.fingerprint
    assert record["stats"]["train_seconds"] <= 20 * 60
