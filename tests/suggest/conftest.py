"""Fixtures of the suggest tests: a small unlabelled pool and one shortcut mistake of the default model."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def small_pool(tmp_path_factory):
    """A 240-image generated world used as an unlabelled pool (its labels are never read by suggest)."""
    from steerpatch.world import write_world

    root = tmp_path_factory.mktemp("pool") / "pool"
    write_world(root, split="test", n=240, seed=5, progress=False)
    return root


@pytest.fixture(scope="session")
def mistake(concept_model, test_world):
    """(path, true label, predicted) of the first conflicting image the default model calls a star."""
    from steerpatch.data import load_dataset
    from steerpatch.models import build_zero_shot_head, classify_images

    data = load_dataset(test_world)
    head = build_zero_shot_head(concept_model, data.classes)
    items = [i for i in data.items if i.attributes.get("shortcut") == "conflicting"][:64]
    predicted = classify_images(concept_model, [data.load_image(i) for i in items], head, progress=False)
    for item, p in zip(items, predicted, strict=True):
        if p == "star" and item.label != "star":
            return item.path, item.label, p
    raise AssertionError("the default model made no water->star mistake among 64 conflicting images")


@pytest.fixture(scope="session")
def right_image(concept_model, test_world):
    """(path, label) of an image the default model classifies correctly."""
    from steerpatch.data import load_dataset
    from steerpatch.models import build_zero_shot_head, classify_images

    data = load_dataset(test_world)
    head = build_zero_shot_head(concept_model, data.classes)
    items = data.items[:16]
    predicted = classify_images(concept_model, [data.load_image(i) for i in items], head, progress=False)
    item = next(i for i, p in zip(items, predicted, strict=True) if p == i.label)
    return item.path, item.label


@pytest.fixture(scope="session")
def suggested(tmp_path_factory, mistake, small_pool, concept_model, default_sae):
    """One `suggest` run on the small pool, written to disk: (Suggestion, summary doc, out folder)."""
    from steerpatch.suggest import suggest, write_suggestion

    path, label, _ = mistake
    found = suggest(concept_model, default_sae, [path], label, small_pool, budget=33, keep=3)
    out = tmp_path_factory.mktemp("suggest") / "out"
    return found, write_suggestion(found, out), out
