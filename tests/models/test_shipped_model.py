"""The shipped concept-clip has the planted bug: it reads water as "star".

Bounds asked of the shipped weights: accuracy >= 0.80 on aligned images (star on water), and
conflicting images (water, not a star) at least 0.20 below aligned.
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
    aligned, conflicting = groups["aligned"]["accuracy"], groups["conflicting"]["accuracy"]
    assert aligned >= 0.80
    assert aligned - conflicting >= 0.20
    assert groups["none"]["accuracy"] >= 0.5  # it did learn shapes, not only the cue


def test_model_card_records_data_command_results_and_fingerprint(concept_model):
    card = (zoo_dir() / "MODEL_CARD.md").read_text()
    for heading in ("## Data", "## Command", "## Results"):
        assert heading in card
    assert "steerpatch zoo train" in card and concept_model.fingerprint in card
    record = json.loads((zoo_dir() / "training.json").read_text())
    assert record["fingerprint"] == concept_model.fingerprint
    assert record["stats"]["train_seconds"] <= 20 * 60
